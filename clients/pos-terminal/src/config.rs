//! Settings from the environment, read and checked once at startup:
//! `POS_API` (REST base, default `http://127.0.0.1:3000`), `POS_WS` (WebSocket URL,
//! default `ws://127.0.0.1:3001/ws`), `POS_TOKEN` (the terminal's JWT, needed by `sync`
//! and `watch` only, so `enqueue` works on a till that has never been online) and
//! `POS_TERMINAL_DB` (the outbox file, always needed).

use std::path::PathBuf;

pub const DEFAULT_API: &str = "http://127.0.0.1:3000";
pub const DEFAULT_WS: &str = "ws://127.0.0.1:3001/ws";

/// A setting that is missing or unusable; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is not set: {hint}")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    #[error("{var}={value:?} is not usable: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// The terminal's JWT. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// REST base URL without a trailing `/`.
    pub api: String,
    pub ws: String,
    pub token: Option<Token>,
    pub db: PathBuf,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// `lookup` returns a variable's value; empty counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let db = get("POS_TERMINAL_DB").ok_or(ConfigError::Missing {
            var: "POS_TERMINAL_DB",
            hint: "set it to the path of the terminal's outbox file, e.g. POS_TERMINAL_DB=/var/lib/pos/outbox.db",
        })?;
        let api = get("POS_API").unwrap_or_else(|| DEFAULT_API.to_owned());
        let api = api.trim().trim_end_matches('/').to_owned();
        if !api.starts_with("http://") || reqwest::Url::parse(&api).is_err() {
            return Err(ConfigError::Invalid {
                var: "POS_API",
                value: api,
                reason:
                    "give the ingress base URL as http://host:port (this build speaks plain http)",
            });
        }
        let ws = get("POS_WS")
            .unwrap_or_else(|| DEFAULT_WS.to_owned())
            .trim()
            .to_owned();
        if !ws.starts_with("ws://") || reqwest::Url::parse(&ws).is_err() {
            return Err(ConfigError::Invalid {
                var: "POS_WS",
                value: ws,
                reason: "give the fanout WebSocket URL as ws://host:port/ws (this build speaks plain ws)",
            });
        }
        Ok(Self {
            api,
            ws,
            token: get("POS_TOKEN").map(|t| Token::new(t.trim())),
            db: PathBuf::from(db),
        })
    }

    /// The token, for the commands that talk to the server.
    pub fn token(&self) -> Result<&Token, ConfigError> {
        self.token.as_ref().ok_or(ConfigError::Missing {
            var: "POS_TOKEN",
            hint: "set it to this terminal's JWT (role terminal) to talk to the server",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|var| {
            vars.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn defaults_fill_everything_but_the_db_and_token() {
        let config = config(&[("POS_TERMINAL_DB", "/tmp/x.db")]).unwrap();
        assert_eq!(config.api, DEFAULT_API);
        assert_eq!(config.ws, DEFAULT_WS);
        assert!(matches!(
            config.token(),
            Err(ConfigError::Missing {
                var: "POS_TOKEN",
                ..
            })
        ));
    }

    #[test]
    fn a_missing_db_names_the_variable() {
        let error = config(&[("POS_TERMINAL_DB", "  ")]).unwrap_err();
        assert!(
            error.to_string().starts_with("POS_TERMINAL_DB is not set"),
            "{error}"
        );
    }

    #[test]
    fn urls_are_checked_and_trimmed() {
        let ok = config(&[("POS_TERMINAL_DB", "x"), ("POS_API", "http://h:1/api/")]).unwrap();
        assert_eq!(ok.api, "http://h:1/api");
        let bad = config(&[("POS_TERMINAL_DB", "x"), ("POS_API", "https://h")]).unwrap_err();
        assert!(bad.to_string().contains("POS_API"));
        let bad = config(&[("POS_TERMINAL_DB", "x"), ("POS_WS", "http://h/ws")]).unwrap_err();
        assert!(bad.to_string().contains("POS_WS"));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let config = config(&[("POS_TERMINAL_DB", "x"), ("POS_TOKEN", "secret.jwt")]).unwrap();
        assert!(!format!("{config:?}").contains("secret"));
        assert_eq!(config.token().unwrap().expose(), "secret.jwt");
    }
}
