//! A private PostgreSQL cluster: `initdb` in a directory, started on a loopback
//! port with pg_cron preloaded when it is installed. `leadrelay dev` keeps one
//! under `.leadrelay/`; the test harness makes throwaway ones.
//!
//! PostgreSQL refuses to run as root, so when we are root the cluster's files
//! belong to, and its processes run as, the `postgres` system user (or `nobody`).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Uid, User, chown};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under /usr/lib/postgresql: install the Debian package postgresql-15"
    )]
    BinariesMissing,
    #[error(
        "running as root and no unprivileged user (postgres or nobody) exists to run PostgreSQL"
    )]
    NoUnprivilegedUser,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
    #[error("no free TCP port on 127.0.0.1: {0}")]
    NoPort(std::io::Error),
    #[error(
        "PostgreSQL runs as user {user} here (it refuses root), and that user cannot enter {path}: choose a directory it can reach, e.g. LEADRELAY_DEV_DIR=/var/tmp/leadrelay"
    )]
    Unreachable { user: String, path: PathBuf },
}

/// How a cluster is made and configured.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory that holds `data/`, the socket and the log.
    pub root: PathBuf,
    /// Port to listen on; `None` picks a free one.
    pub port: Option<u16>,
    /// Trade durability for speed (fsync off): tests only.
    pub ephemeral: bool,
    /// The one database in which pg_cron runs its jobs (`cron.database_name`).
    pub cron_database: String,
}

#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    run_as: Option<(Uid, Gid)>,
    pg_cron: bool,
}

impl Cluster {
    /// Creates the cluster on first use, then starts it. Idempotent: an already
    /// initialised directory is reused and a running server is left running.
    pub fn start(options: &ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin_dir = find_bin_dir().ok_or(ClusterError::BinariesMissing)?;
        let run_as = unprivileged_user()?;
        let pg_cron = pg_cron_installed(&bin_dir);
        let root = std::path::absolute(&options.root).map_err(|source| ClusterError::Io {
            path: options.root.clone(),
            source,
        })?;
        if let Some(owner) = run_as {
            check_reachable(&root, owner)?;
        }
        create_owned_dir(&root, run_as)?;
        let data = root.join("data");
        let port = match options.port {
            Some(port) => port,
            None => read_port(&root).map_or_else(free_port, Ok)?,
        };
        let mut cluster = Cluster {
            root,
            port,
            bin_dir,
            run_as,
            pg_cron,
        };
        if !data.join("PG_VERSION").exists() {
            cluster.initdb(options)?;
        } else {
            cluster.port = read_port(&cluster.root).unwrap_or(port);
        }
        if !cluster.is_running() {
            cluster.pg_ctl(&["start", "-w", "-t", "60", "-l", &cluster.log_path_str()])?;
        }
        Ok(cluster)
    }

    fn initdb(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let data = self.root.join("data");
        self.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let mut conf = format!(
            "\n# written by leadrelay\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sock}'\nmax_connections = 300\nmax_worker_processes = 32\nlog_min_messages = warning\n",
            port = self.port,
            sock = self.root.display(),
        );
        if self.pg_cron {
            conf.push_str(&format!(
                "shared_preload_libraries = 'pg_cron'\ncron.database_name = '{}'\ncron.use_background_workers = on\ncron.log_run = on\n",
                options.cron_database
            ));
        }
        if options.ephemeral {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = fs::read_to_string(&conf_path).map_err(|source| ClusterError::Io {
            path: conf_path.clone(),
            source,
        })?;
        existing.push_str(&conf);
        fs::write(&conf_path, existing).map_err(|source| ClusterError::Io {
            path: conf_path.clone(),
            source,
        })?;
        fs::write(self.root.join("port"), self.port.to_string()).map_err(|source| {
            ClusterError::Io {
                path: self.root.join("port"),
                source,
            }
        })?;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether pg_cron is installed and preloaded in this cluster.
    pub fn has_pg_cron(&self) -> bool {
        self.pg_cron
    }

    /// A connection string for the superuser `postgres` on database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db)
    }

    pub fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .args(["status", "-D", path_str(&self.root.join("data"))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Stops the server: `fast` rolls back sessions, `immediate` is a crash.
    pub fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", mode])
    }

    pub fn restart(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &self.log_path_str()])
    }

    /// Stops the server and removes the directory when `pid` (the process that
    /// owns this cluster) is gone, however it ended, SIGKILL included.
    pub fn remove_when_process_exits(&self, pid: u32) -> Result<(), ClusterError> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; '{pg_ctl}' stop -D '{data}' -m immediate >/dev/null 2>&1; rm -rf '{root}'",
            pg_ctl = self.bin_dir.join("pg_ctl").display(),
            data = self.root.join("data").display(),
            root = self.root.display(),
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd.spawn().map_err(|source| ClusterError::Io {
            path: PathBuf::from("sh"),
            source,
        })?;
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    fn log_path_str(&self) -> String {
        self.log_path().display().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), ClusterError> {
        let data = self.root.join("data");
        let mut all = vec!["-D", path_str(&data)];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
            // initdb looks up the user's home; /tmp always exists
            cmd.env("HOME", "/tmp");
        }
        cmd.current_dir(&self.root);
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), ClusterError> {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ClusterError::Io {
                path: self.bin_dir.join(program),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        if let Ok(log) = fs::read_to_string(self.log_path()) {
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            text.push_str("\nserver log:\n");
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        Err(ClusterError::Command {
            command: format!("{program} {}", args.join(" ")),
            output: text.trim().to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    Fast,
    Immediate,
}

/// Where `initdb` lives: `LEADRELAY_PG_BIN` when set (a PostgreSQL installed
/// elsewhere), else PATH, then Debian's versioned directories.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LEADRELAY_PG_BIN") {
        let dir = PathBuf::from(dir);
        return (dir.join("initdb").exists() && dir.join("pg_ctl").exists()).then_some(dir);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("initdb");
            if candidate.exists() {
                // Debian links /usr/local/bin/initdb or uses pg_wrapper; the real
                // directory is where pg_ctl and postgres sit beside it.
                let real = fs::canonicalize(&candidate).ok()?;
                let dir = real.parent()?.to_path_buf();
                if dir.join("pg_ctl").exists() && dir.join("postgres").exists() {
                    return Some(dir);
                }
            }
        }
    }
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// pg_cron's library sits in the server's pkglibdir, beside `bin/` on Debian.
pub fn pg_cron_installed(bin_dir: &Path) -> bool {
    bin_dir
        .parent()
        .is_some_and(|base| base.join("lib").join("pg_cron.so").exists())
}

fn unprivileged_user() -> Result<Option<(Uid, Gid)>, ClusterError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = User::from_name(name) {
            return Ok(Some((user.uid, user.gid)));
        }
    }
    Err(ClusterError::NoUnprivilegedUser)
}

/// Every existing directory above `dir` must let the server's user through.
fn check_reachable(dir: &Path, (uid, gid): (Uid, Gid)) -> Result<(), ClusterError> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let passable = mode & 0o001 != 0
            || (meta.uid() == uid.as_raw() && mode & 0o100 != 0)
            || (meta.gid() == gid.as_raw() && mode & 0o010 != 0);
        if !passable {
            let user = User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| uid.to_string());
            return Err(ClusterError::Unreachable {
                user,
                path: ancestor.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn create_owned_dir(dir: &Path, owner: Option<(Uid, Gid)>) -> Result<(), ClusterError> {
    let io = |source| ClusterError::Io {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    if let Some((uid, gid)) = owner {
        chown(dir, Some(uid), Some(gid)).map_err(|e| io(std::io::Error::from(e)))?;
    }
    Ok(())
}

fn read_port(root: &Path) -> Option<u16> {
    fs::read_to_string(root.join("port"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(ClusterError::NoPort)?;
    let port = listener.local_addr().map_err(ClusterError::NoPort)?.port();
    Ok(port)
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}
