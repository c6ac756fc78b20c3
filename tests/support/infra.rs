//! The infrastructure the test script started, read from env; private extra servers
//! for tests that must stop one.

use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

#[derive(Debug, Clone)]
pub struct Infra {
    pub nats_url: String,
    pub redis_url: String,
    pub mongodb_uri: String,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the suite with `./x test` (it starts NATS, Redis and MongoDB)"
        )
    })
}

impl Infra {
    pub fn from_env() -> Self {
        Self {
            nats_url: env("NATS_URL"),
            redis_url: env("REDIS_URL"),
            mongodb_uri: env("MONGODB_URI"),
        }
    }

    /// The NATS user of `service` (`ingress` … `operator`) on the shared server, from the
    /// `NATS_PASSWORD_<SERVICE>` that `xtask stack` exports; anonymous without one (a
    /// server without authorization).
    pub fn nats_auth(&self, service: &str) -> service_kit::settings::NatsAuth {
        match std::env::var(format!("NATS_PASSWORD_{}", service.to_uppercase())) {
            Ok(password) if !password.is_empty() => {
                service_kit::settings::NatsAuth::user_password(service, &password)
            }
            _ => service_kit::settings::NatsAuth::Anonymous,
        }
    }

    /// The env a service binary needs to log in as itself.
    pub fn nats_env(&self, service: &str) -> Vec<(String, String)> {
        match self.nats_auth(service) {
            service_kit::settings::NatsAuth::UserPassword { user, password } => vec![
                ("NATS_USER".into(), user),
                ("NATS_PASSWORD".into(), password.expose().to_owned()),
            ],
            _ => Vec::new(),
        }
    }

    /// A client with the operator's rights (what a person with the nats CLI has), for
    /// tests that inspect or rearrange streams.
    pub async fn operator_nats(&self) -> async_nats::Client {
        self.nats_as("operator", &self.nats_url).await
    }

    /// A client logged in as `user` on `url`.
    pub async fn nats_as(&self, user: &str, url: &str) -> async_nats::Client {
        let options = match self.nats_auth(user) {
            service_kit::settings::NatsAuth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(
                    user.clone(),
                    password.expose().to_owned(),
                )
                .custom_inbox_prefix(format!("_INBOX_{user}"))
            }
            _ => async_nats::ConnectOptions::new(),
        };
        options.connect(url).await.unwrap()
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server of our own (nats-server, mongod, redis-server) that a test may kill and restart.
pub struct PrivateServer {
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    program: String,
    args: Vec<String>,
    pub dir: std::path::PathBuf,
}

impl PrivateServer {
    pub async fn nats() -> Self {
        Self::launch(|port| {
            let dir = tempdir("nats");
            let args = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-js".into(),
                "-sd".into(),
                dir.display().to_string(),
            ];
            Self {
                port,
                url: format!("nats://127.0.0.1:{port}"),
                child: None,
                program: env("POS_NATS_SERVER_BIN"),
                args,
                dir,
            }
        })
        .await
    }

    /// A redis-server without persistence: a restart comes back empty, as a flushed or
    /// replaced Redis would.
    pub async fn redis() -> Self {
        Self::launch(|port| {
            let dir = tempdir("redis");
            let args = [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.display().to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            Self {
                port,
                url: format!("redis://127.0.0.1:{port}"),
                child: None,
                program: env("POS_REDIS_SERVER_BIN"),
                args,
                dir,
            }
        })
        .await
    }

    /// A standalone mongod (no replica set: enough for health and outage tests).
    pub async fn mongod() -> Self {
        Self::launch(|port| {
            let dir = tempdir("mongo");
            let args = vec![
                "--bind_ip".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--dbpath".into(),
                dir.display().to_string(),
                "--wiredTigerCacheSizeGB".into(),
                "0.25".into(),
                // Its unix socket in its own directory, not `/tmp/mongodb-<port>.sock`: a
                // try that lost its port to another process must not remove that
                // process' socket, and the directory goes with the server.
                "--unixSocketPrefix".into(),
                dir.display().to_string(),
                "--quiet".into(),
            ];
            let url = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
            Self {
                port,
                url,
                child: None,
                program: env("POS_MONGOD_BIN"),
                args,
                dir,
            }
        })
        .await
    }

    /// Starts the server `make(port)` describes on a free port, and on another one if it
    /// cannot listen there: `free_port` only saw the port free, and a parallel test's
    /// server can take it in between. The port then answers, but not ours — under a full
    /// suite a stall or kill of "our" mongod once hit a process that had already exited,
    /// while the test talked to another test's server.
    async fn launch(make: impl Fn(u16) -> Self) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let mut s = make(free_port());
            match s.try_start().await {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("no private server could start on any of 5 free ports: {last}");
    }

    /// Starts the server again after [`PrivateServer::kill`]. Panics if it is running:
    /// a second process on the same port and data dir would fail, and replacing the
    /// handle would kill the first (`kill_on_drop`), a race a test could pass by.
    pub async fn start(&mut self) {
        if let Err(e) = self.try_start().await {
            panic!("{e}");
        }
    }

    /// Starts the server and waits until it says it is listening (its own log line, not
    /// just an answer on the port, which another process could give); an error if it
    /// exits first.
    async fn try_start(&mut self) -> Result<(), String> {
        if let Some(child) = self.child.as_mut() {
            assert!(
                child.try_wait().ok().flatten().is_some(),
                "{} is still running: kill it before starting it again",
                self.program
            );
        }
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program));
        self.child = Some(child);
        // What each server logs once it listens on its port.
        let ready = if self.program.contains("mongod") {
            "Waiting for connections"
        } else if self.program.contains("redis") {
            "Ready to accept connections"
        } else {
            "Server is ready"
        };
        let log = self.dir.join("server.log");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains(ready)) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("just started");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} on port {} exited ({status}) before listening; its log:\n{}",
                    self.program,
                    self.port,
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{} on port {} did not say it listens within 30 s",
                    self.program, self.port
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the process stays, holds its connections and answers nothing — a stalled
    /// dependency, not a dead one.
    pub fn stall(&self) {
        self.send(super::Signal::SIGSTOP);
    }

    /// SIGCONT after [`PrivateServer::stall`].
    pub fn resume(&self) {
        self.send(super::Signal::SIGCONT);
    }

    fn send(&self, signal: super::Signal) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running");
        super::signal(pid, signal);
    }

    /// kill -9.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

/// A private server takes its data with it: a mongod's alone is ~300 MB of preallocated
/// journal, and a suite starts dozens of them (left behind, they filled the disk of a
/// machine that ran the suite a few times).
impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SIGKILL ends a stalled (SIGSTOPped) server too.
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(super::unique(&format!("pos-{name}-")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
