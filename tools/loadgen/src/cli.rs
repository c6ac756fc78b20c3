//! Command-line parsing with std only: `--name value` or `--name=value`, flags without
//! a value, every problem reported with the option's name.

use std::{collections::VecDeque, time::Duration};

pub const USAGE: &str = "\
loadgen: load generator for the POS backend, through its public API

USAGE
  loadgen pipeline [options]   drive ingress (REST) and fanout (WebSocket) end to end
  loadgen ceilings [options]   raw JetStream publish and MongoDB insert rates on this machine
  loadgen sockets [options]    many concurrent sockets on ONE fanout: memory per socket, delivery latency

PIPELINE OPTIONS
  --ingress URL[,URL…]   ingress base URLs, used round-robin   (default http://localhost:3000)
  --fanout URL[,URL…]    fanout base URLs; one socket per tenant per URL (default http://localhost:3001)
  --secret S             HS256 secret (default $JWT_SECRET, else the dev default of ./x up)
  --tenants N            tenants, one JWT each                 (default 4)
  --terminals N          terminals per tenant                  (default 3)
  --mode closed|open     closed: C workers post-await-repeat; open: fixed rate (default closed)
  --concurrency C        closed: workers; open: max requests in flight (default 200)
  --rate R               open: requests per second             (default 1000)
  --duration D           measured time, e.g. 60s, 2m, 500ms    (default 60s)
  --warmup D             load before measuring, not counted    (default 5s)
  --dup-share F          share of requests that resend an earlier body+key (default 0.05)
  --drain D              wait for outstanding COMPLETED frames (default 10s)
  --persist-wait D       then wait until GET /invoices?state=COMPLETED lists every
                         completed invoice (the system of record caught up; 0 = skip) (default 60s)
  --json                 stdout gets only the JSON line; the table goes to stderr
  --sku-lines            lines carry only sku + quantity, priced by the tenant's catalog
                         (written by the run first)

SOCKETS OPTIONS
  --fanout URL           one fanout base URL                    (default http://localhost:3001)
  --ingress URL          ingress base URL                       (default http://localhost:3000)
  --secret S             HS256 secret (default $JWT_SECRET, else the dev default)
  --sockets N            concurrent sockets                     (default 5000)
  --tenants N            tenants the sockets are spread over    (default 10)
  --invoices N           invoices posted once all are open      (default 200)
  --rate R               invoices per second                    (default 50)
  --connect-concurrency C  handshakes at a time                 (default 200)
  --wait D               wait for every COMPLETED frame         (default 30s)
  --fanout-pid PID       read the fanout's VmRSS before, with all open, and after
  --json                 stdout gets only the JSON line; the table goes to stderr

CEILINGS OPTIONS
  --nats URL             (default $NATS_URL, else nats://127.0.0.1:4222)
  --mongo URI            (default $MONGODB_URI, else mongodb://127.0.0.1:27017/?replicaSet=rs0&directConnection=true)
  --duration D           length of EACH of the five measurements (default 10s)
  --in-flight N          pipelined JetStream publishes awaiting their ack (default 256)
  --replicas N           replicas of the temporary stream (3 on a cluster) (default 1)
  --concurrency C        tasks running insert_one                (default 64)
  --bulk-concurrency C   tasks running insert_many of 100        (default 4)
  --ledger-callers C     tasks numbering invoices of ONE tenant through the store's
                         batching numberer, as a processor's deliveries do (default 256)
  --json                 stdout gets only the JSON line; the table goes to stderr
";

/// The JWT secret ./x up starts the services with unless JWT_SECRET is set.
pub const DEV_SECRET: &str = "dev-secret-change-me-0123456789abcdef";

#[derive(Debug)]
pub enum Command {
    Pipeline(PipelineArgs),
    Ceilings(CeilingsArgs),
    Sockets(SocketsArgs),
    Help,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Closed,
    Open,
}

#[derive(Debug, Clone)]
pub struct PipelineArgs {
    pub ingress: Vec<String>,
    pub fanout: Vec<String>,
    pub secret: String,
    pub tenants: usize,
    pub terminals: usize,
    pub mode: Mode,
    pub concurrency: usize,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub dup_share: f64,
    pub drain: Duration,
    pub persist_wait: Duration,
    pub json: bool,
    /// Lines give only sku and quantity: ingress prices them from the catalog, which
    /// the run writes first (one manager PUT per article and tenant).
    pub sku_lines: bool,
}

#[derive(Debug, Clone)]
pub struct CeilingsArgs {
    pub nats: String,
    pub mongo: String,
    pub duration: Duration,
    pub in_flight: usize,
    pub concurrency: usize,
    pub bulk_concurrency: usize,
    pub ledger_callers: usize,
    /// Replicas of the temporary stream (3 on a 3-node cluster).
    pub replicas: usize,
    pub json: bool,
}

#[derive(Debug, Clone)]
pub struct SocketsArgs {
    pub fanout: String,
    pub ingress: String,
    pub secret: String,
    pub sockets: usize,
    pub tenants: usize,
    pub invoices: usize,
    pub rate: f64,
    pub connect_concurrency: usize,
    pub wait: Duration,
    pub fanout_pid: Option<u32>,
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

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits `--name=value` and pairs each option with its value.
struct Options {
    args: VecDeque<String>,
}

impl Options {
    /// Next option name and its inline value (`--x=1`), or None at the end.
    fn next(&mut self) -> Option<(String, Option<String>)> {
        let arg = self.args.pop_front()?;
        Some(match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value.into())),
            _ => (arg, None),
        })
    }

    fn value(&mut self, name: &str, inline: Option<String>) -> Result<String, String> {
        inline
            .or_else(|| self.args.pop_front())
            .ok_or_else(|| format!("{name} needs a value"))
    }
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{name}: {text:?} is not a valid number"))
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args: VecDeque<String> = args.into_iter().collect();
    let Some(sub) = args.pop_front() else {
        return Ok(Command::Help);
    };
    let mut opts = Options { args };
    match sub.as_str() {
        "pipeline" => parse_pipeline(&mut opts).map(Command::Pipeline),
        "ceilings" => parse_ceilings(&mut opts).map(Command::Ceilings),
        "sockets" => parse_sockets(&mut opts).map(Command::Sockets),
        "-h" | "--help" | "help" => Ok(Command::Help),
        other => Err(format!(
            "unknown command {other:?} (pipeline | ceilings | sockets)"
        )),
    }
}

fn parse_pipeline(opts: &mut Options) -> Result<PipelineArgs, String> {
    let mut a = PipelineArgs {
        ingress: vec!["http://localhost:3000".into()],
        fanout: vec!["http://localhost:3001".into()],
        secret: env_or("JWT_SECRET", DEV_SECRET),
        tenants: 4,
        terminals: 3,
        mode: Mode::Closed,
        concurrency: 200,
        rate: 1000.0,
        duration: Duration::from_secs(60),
        warmup: Duration::from_secs(5),
        dup_share: 0.05,
        drain: Duration::from_secs(10),
        persist_wait: Duration::from_secs(60),
        json: false,
        sku_lines: false,
    };
    while let Some((name, inline)) = opts.next() {
        match name.as_str() {
            "--json" => a.json = true,
            "--sku-lines" => a.sku_lines = true,
            "-h" | "--help" => return Err(String::new()),
            "--ingress" => a.ingress = list(&opts.value(&name, inline)?),
            "--fanout" => a.fanout = list(&opts.value(&name, inline)?),
            "--secret" => a.secret = opts.value(&name, inline)?,
            "--tenants" => a.tenants = number(&name, &opts.value(&name, inline)?)?,
            "--terminals" => a.terminals = number(&name, &opts.value(&name, inline)?)?,
            "--mode" => {
                let v = opts.value(&name, inline)?;
                a.mode = match v.as_str() {
                    "closed" => Mode::Closed,
                    "open" => Mode::Open,
                    _ => return Err(format!("--mode: {v:?} is not closed or open")),
                }
            }
            "--concurrency" => a.concurrency = number(&name, &opts.value(&name, inline)?)?,
            "--rate" => a.rate = number(&name, &opts.value(&name, inline)?)?,
            "--duration" => a.duration = parse_duration(&opts.value(&name, inline)?)?,
            "--warmup" => a.warmup = parse_duration(&opts.value(&name, inline)?)?,
            "--dup-share" => a.dup_share = number(&name, &opts.value(&name, inline)?)?,
            "--drain" => a.drain = parse_duration(&opts.value(&name, inline)?)?,
            "--persist-wait" => a.persist_wait = parse_duration(&opts.value(&name, inline)?)?,
            _ => return Err(format!("pipeline: unknown option {name}")),
        }
    }
    if a.ingress.is_empty() || a.fanout.is_empty() {
        return Err("--ingress and --fanout need at least one URL".into());
    }
    if a.tenants == 0 || a.terminals == 0 || a.concurrency == 0 {
        return Err("--tenants, --terminals and --concurrency must be ≥ 1".into());
    }
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err("--rate must be > 0".into());
    }
    if !(0.0..=0.9).contains(&a.dup_share) {
        return Err("--dup-share must be within 0 … 0.9".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    Ok(a)
}

fn parse_sockets(opts: &mut Options) -> Result<SocketsArgs, String> {
    let mut a = SocketsArgs {
        fanout: "http://localhost:3001".into(),
        ingress: "http://localhost:3000".into(),
        secret: env_or("JWT_SECRET", DEV_SECRET),
        sockets: 5000,
        tenants: 10,
        invoices: 200,
        rate: 50.0,
        connect_concurrency: 200,
        wait: Duration::from_secs(30),
        fanout_pid: None,
        json: false,
    };
    let url = |v: String| v.trim().trim_end_matches('/').to_owned();
    while let Some((name, inline)) = opts.next() {
        match name.as_str() {
            "--json" => a.json = true,
            "-h" | "--help" => return Err(String::new()),
            "--fanout" => a.fanout = url(opts.value(&name, inline)?),
            "--ingress" => a.ingress = url(opts.value(&name, inline)?),
            "--secret" => a.secret = opts.value(&name, inline)?,
            "--sockets" => a.sockets = number(&name, &opts.value(&name, inline)?)?,
            "--tenants" => a.tenants = number(&name, &opts.value(&name, inline)?)?,
            "--invoices" => a.invoices = number(&name, &opts.value(&name, inline)?)?,
            "--rate" => a.rate = number(&name, &opts.value(&name, inline)?)?,
            "--connect-concurrency" => {
                a.connect_concurrency = number(&name, &opts.value(&name, inline)?)?;
            }
            "--wait" => a.wait = parse_duration(&opts.value(&name, inline)?)?,
            "--fanout-pid" => a.fanout_pid = Some(number(&name, &opts.value(&name, inline)?)?),
            _ => return Err(format!("sockets: unknown option {name}")),
        }
    }
    if a.fanout.contains(',') {
        return Err("--fanout takes one URL in sockets mode".into());
    }
    if a.sockets == 0 || a.tenants == 0 || a.connect_concurrency == 0 {
        return Err("--sockets, --tenants and --connect-concurrency must be ≥ 1".into());
    }
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err("--rate must be > 0".into());
    }
    Ok(a)
}

fn parse_ceilings(opts: &mut Options) -> Result<CeilingsArgs, String> {
    let mut a = CeilingsArgs {
        nats: env_or("NATS_URL", "nats://127.0.0.1:4222"),
        mongo: env_or(
            "MONGODB_URI",
            "mongodb://127.0.0.1:27017/?replicaSet=rs0&directConnection=true",
        ),
        duration: Duration::from_secs(10),
        in_flight: 256,
        concurrency: 64,
        bulk_concurrency: 4,
        ledger_callers: 256,
        replicas: 1,
        json: false,
    };
    while let Some((name, inline)) = opts.next() {
        match name.as_str() {
            "--json" => a.json = true,
            "-h" | "--help" => return Err(String::new()),
            "--nats" => a.nats = opts.value(&name, inline)?,
            "--mongo" => a.mongo = opts.value(&name, inline)?,
            "--duration" => a.duration = parse_duration(&opts.value(&name, inline)?)?,
            "--in-flight" => a.in_flight = number(&name, &opts.value(&name, inline)?)?,
            "--replicas" => a.replicas = number(&name, &opts.value(&name, inline)?)?,
            "--concurrency" => a.concurrency = number(&name, &opts.value(&name, inline)?)?,
            "--bulk-concurrency" => {
                a.bulk_concurrency = number(&name, &opts.value(&name, inline)?)?;
            }
            "--ledger-callers" => a.ledger_callers = number(&name, &opts.value(&name, inline)?)?,
            _ => return Err(format!("ceilings: unknown option {name}")),
        }
    }
    if a.in_flight == 0 || a.concurrency == 0 || a.bulk_concurrency == 0 || a.ledger_callers == 0 {
        return Err(
            "--in-flight, --concurrency, --bulk-concurrency and --ledger-callers must be ≥ 1"
                .into(),
        );
    }
    if a.duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
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
    fn pipeline_options_in_both_spellings() {
        let Ok(Command::Pipeline(a)) = parse(args(
            "pipeline --ingress=http://a:1/,http://b:2 --fanout http://c:3 --mode open \
             --rate 250 --duration 15s --warmup=1s --dup-share 0.1 --json",
        )) else {
            panic!("did not parse")
        };
        assert_eq!(a.ingress, ["http://a:1", "http://b:2"]);
        assert_eq!(a.fanout, ["http://c:3"]);
        assert_eq!(a.mode, Mode::Open);
        assert_eq!(a.rate, 250.0);
        assert_eq!(a.duration, Duration::from_secs(15));
        assert_eq!(a.warmup, Duration::from_secs(1));
        assert!(a.json);
    }

    #[test]
    fn sockets_options() {
        let Ok(Command::Sockets(a)) = parse(args(
            "sockets --fanout http://f:1/ --sockets 2000 --tenants 4 --fanout-pid 42 --wait=10s",
        )) else {
            panic!("did not parse")
        };
        assert_eq!(a.fanout, "http://f:1");
        assert_eq!((a.sockets, a.tenants, a.invoices), (2000, 4, 200));
        assert_eq!(a.fanout_pid, Some(42));
        assert_eq!(a.wait, Duration::from_secs(10));
        assert!(parse(args("sockets --fanout http://a,http://b")).is_err());
    }

    #[test]
    fn problems_name_the_option() {
        let err = parse(args("pipeline --tenants many")).unwrap_err();
        assert!(err.contains("--tenants"), "{err}");
        let err = parse(args("pipeline --rate")).unwrap_err();
        assert!(err.contains("--rate needs a value"), "{err}");
        let err = parse(args("ceilings --bogus 1")).unwrap_err();
        assert!(err.contains("unknown option --bogus"), "{err}");
        let err = parse(args("pipeline --bogus")).unwrap_err();
        assert!(err.contains("unknown option --bogus"), "{err}");
        assert!(parse(args("frobnicate")).is_err());
    }
}
