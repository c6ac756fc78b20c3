//! fanout: WebSocket gateway (in progress).
