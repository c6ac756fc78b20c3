//! The command line, declared with clap: one subcommand per measurement, every option
//! with its default and its check (a bad value is refused with the option's name before
//! anything runs).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::Duration;

/// The JWT secret ./x up starts the services with unless JWT_SECRET is set.
pub const DEV_SECRET: &str = "dev-secret-change-me-0123456789abcdef";

/// loadgen: load generator for the POS backend, through its public API.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
pub struct Cli {
    /// What to measure.
    #[command(subcommand)]
    pub command: Command,
}

/// The measurements.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drive ingress (REST) and fanout (WebSocket) end to end.
    Pipeline(PipelineArgs),
    /// Raw JetStream publish and MongoDB insert rates on this machine.
    Ceilings(CeilingsArgs),
    /// Many concurrent sockets on ONE fanout: memory per socket, delivery latency.
    Sockets(SocketsArgs),
}

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// C workers post, await the answer, repeat.
    Closed,
    /// A fixed rate, whatever the answers.
    Open,
}

/// `loadgen pipeline`.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Ingress base URLs, used round-robin.
    #[arg(long, value_delimiter = ',', value_parser = url, default_value = "http://localhost:3000")]
    pub ingress: Vec<String>,
    /// Fanout base URLs; one socket per tenant per URL.
    #[arg(long, value_delimiter = ',', value_parser = url, default_value = "http://localhost:3001")]
    pub fanout: Vec<String>,
    /// HS256 secret (default $JWT_SECRET, else the dev default of ./x up).
    #[arg(long, default_value_t = default_secret(), hide_default_value = true)]
    pub secret: String,
    /// Tenants, one JWT each.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub tenants: usize,
    /// Terminals per tenant.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub terminals: usize,
    /// closed: C workers post-await-repeat; open: a fixed rate.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// closed: workers; open: most requests in flight.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    pub concurrency: usize,
    /// open: requests per second.
    #[arg(long, default_value_t = 1000.0, value_parser = positive)]
    pub rate: f64,
    /// Measured time, e.g. 60s, 2m, 500ms.
    #[arg(long, default_value = "60s", value_parser = nonzero_duration)]
    pub duration: Duration,
    /// Load before measuring, not counted.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Share of requests that resend an earlier body and key (0 … 0.9).
    #[arg(long, default_value_t = 0.05, value_parser = share)]
    pub dup_share: f64,
    /// Wait for outstanding COMPLETED frames.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Then wait until GET /invoices?state=COMPLETED lists every completed invoice (the
    /// system of record caught up; 0 = skip).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub persist_wait: Duration,
    /// stdout gets only the JSON line; the table goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Lines give only sku and quantity: ingress prices them from the catalog, which
    /// the run writes first (one manager PUT per article and tenant).
    #[arg(long)]
    pub sku_lines: bool,
}

/// `loadgen ceilings`.
#[derive(Debug, Clone, Args)]
pub struct CeilingsArgs {
    /// NATS URL (default $NATS_URL, else nats://127.0.0.1:4222).
    #[arg(long, default_value_t = env_or("NATS_URL", "nats://127.0.0.1:4222"))]
    pub nats: String,
    /// MongoDB URI (default $MONGODB_URI, else a local replica set).
    #[arg(long, default_value_t = env_or("MONGODB_URI", "mongodb://127.0.0.1:27017/?replicaSet=rs0&directConnection=true"))]
    pub mongo: String,
    /// Length of EACH measurement (and of the idle window before the floor).
    #[arg(long, default_value = "10s", value_parser = nonzero_duration)]
    pub duration: Duration,
    /// Pipelined JetStream publishes awaiting their ack.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub in_flight: usize,
    /// Tasks running insert_one.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub concurrency: usize,
    /// Tasks running insert_many of 100.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub bulk_concurrency: usize,
    /// Tasks numbering invoices of ONE tenant through the store's batching numberer, as
    /// a processor's deliveries do.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub ledger_callers: usize,
    /// Replicas of the temporary stream (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub replicas: usize,
    /// The floor: operations a second at a FIXED rate (open loop) for the CPU each one
    /// costs — one JetStream message (publish, delivery, ack), one MongoDB insert, one
    /// key lookup — when operations do not overlap, as at the pipeline's fixed rates.
    /// 0 skips it.
    #[arg(long, default_value_t = 600)]
    pub floor_rate: u32,
    /// nats-server's pid, for its CPU per operation in the floor (else not reported).
    #[arg(long)]
    pub nats_pid: Option<u32>,
    /// mongod's pid, for its CPU per operation in the floor (else not reported).
    #[arg(long)]
    pub mongod_pid: Option<u32>,
    /// stdout gets only the JSON line; the table goes to stderr.
    #[arg(long)]
    pub json: bool,
}

/// `loadgen sockets`.
#[derive(Debug, Clone, Args)]
pub struct SocketsArgs {
    /// One fanout base URL.
    #[arg(long, value_parser = one_url, default_value = "http://localhost:3001")]
    pub fanout: String,
    /// Ingress base URL.
    #[arg(long, value_parser = one_url, default_value = "http://localhost:3000")]
    pub ingress: String,
    /// HS256 secret (default $JWT_SECRET, else the dev default).
    #[arg(long, default_value_t = default_secret(), hide_default_value = true)]
    pub secret: String,
    /// Concurrent sockets.
    #[arg(long, default_value_t = 5000, value_parser = at_least_one)]
    pub sockets: usize,
    /// Tenants the sockets are spread over.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub tenants: usize,
    /// Invoices posted once all sockets are open.
    #[arg(long, default_value_t = 200)]
    pub invoices: usize,
    /// Invoices per second.
    #[arg(long, default_value_t = 50.0, value_parser = positive)]
    pub rate: f64,
    /// Handshakes at a time.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    pub connect_concurrency: usize,
    /// Wait for every COMPLETED frame.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Read the fanout's VmRSS before, with all sockets open, and after.
    #[arg(long)]
    pub fanout_pid: Option<u32>,
    /// stdout gets only the JSON line; the table goes to stderr.
    #[arg(long)]
    pub json: bool,
}

/// `60s`, `500ms`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 60s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn nonzero_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| {
        (!d.is_zero())
            .then_some(d)
            .ok_or_else(|| "must be > 0".into())
    })
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be ≥ 1".into()),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("{text:?} is not a number > 0")),
    }
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=0.9).contains(&s) => Ok(s),
        _ => Err(format!("{text:?} is not within 0 … 0.9")),
    }
}

/// A base URL without its trailing slash.
fn url(text: &str) -> Result<String, String> {
    let u = text.trim().trim_end_matches('/');
    if u.is_empty() {
        return Err("an empty URL".into());
    }
    Ok(u.to_owned())
}

/// Exactly one base URL (a comma means a list, which this subcommand does not take).
fn one_url(text: &str) -> Result<String, String> {
    if text.contains(',') {
        return Err("takes one URL here".into());
    }
    url(text)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn default_secret() -> String {
    env_or("JWT_SECRET", DEV_SECRET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, String> {
        Cli::try_parse_from(std::iter::once("loadgen").chain(s.split_whitespace()))
            .map(|c| c.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_declarations_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_common_units() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn pipeline_options_in_both_spellings_with_defaults_for_the_rest() {
        let Ok(Command::Pipeline(a)) = parse(
            "pipeline --ingress=http://a:1/,http://b:2 --fanout http://c:3 --mode open \
             --rate 250 --duration 15s --warmup=1s --dup-share 0.1 --json",
        ) else {
            panic!("did not parse")
        };
        assert_eq!(a.ingress, ["http://a:1", "http://b:2"]);
        assert_eq!(a.fanout, ["http://c:3"]);
        assert_eq!(a.mode, Mode::Open);
        assert_eq!(a.rate, 250.0);
        assert_eq!(a.duration, Duration::from_secs(15));
        assert_eq!(a.warmup, Duration::from_secs(1));
        assert!(a.json && !a.sku_lines);
        assert_eq!((a.tenants, a.terminals, a.concurrency), (4, 3, 200));
        assert_eq!(a.persist_wait, Duration::from_secs(60));
    }

    #[test]
    fn sockets_options() {
        let Ok(Command::Sockets(a)) = parse(
            "sockets --fanout http://f:1/ --sockets 2000 --tenants 4 --fanout-pid 42 --wait=10s",
        ) else {
            panic!("did not parse")
        };
        assert_eq!(a.fanout, "http://f:1");
        assert_eq!((a.sockets, a.tenants, a.invoices), (2000, 4, 200));
        assert_eq!(a.fanout_pid, Some(42));
        assert_eq!(a.wait, Duration::from_secs(10));
        assert!(parse("sockets --fanout http://a,http://b").is_err());
    }

    #[test]
    fn problems_name_the_option() {
        for (line, option) in [
            ("pipeline --tenants many", "--tenants"),
            ("pipeline --tenants 0", "--tenants"),
            ("pipeline --rate", "--rate"),
            ("pipeline --rate=-1", "--rate"),
            ("pipeline --dup-share 2", "--dup-share"),
            ("pipeline --duration 0s", "--duration"),
            ("ceilings --bogus 1", "--bogus"),
            ("pipeline --bogus", "--bogus"),
            ("pipeline --mode sideways", "--mode"),
        ] {
            let err = parse(line).expect_err(line);
            assert!(err.contains(option), "{line}: {err}");
        }
        assert!(parse("frobnicate").is_err());
    }
}
