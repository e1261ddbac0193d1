//! The `forge` binary: `forge serve`, `forge user add|list`, `forge key rotate`, `forge check`,
//! `forge compact`, `forge backup`, `forge runner`.

#![forbid(unsafe_code)]
#![warn(clippy::pedantic)]

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use forge::config::{DEFAULT_DB, LogFormat};
use forge::service::{NewUserInput, Services};
use forge::store::{self, Store};
use forge::{App, Config};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Parser)]
#[command(name = "forge", version = forge::VERSION, about = "Self-hosted automation server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API server.
    Serve(Box<Config>),
    /// Manage users in the database file while the server is stopped.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the server key that seals secrets at rest (server stopped).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check a stopped server's database file: integrity, every record, every index, and that
    /// the server key opens every secret. Exit 0 when clean, 1 when not.
    Check(CheckArgs),
    /// Compact a stopped server's database file, giving the space of deleted records back.
    Compact {
        /// The database file.
        #[arg(long, env = "FORGE_DB", default_value = DEFAULT_DB)]
        db: PathBuf,
    },
    /// Write a backup of the database: from a running server (--url), or of a stopped server's
    /// file (--db).
    Backup(forge::backup::BackupArgs),
    /// A remote runner: register with a server, run its jobs, unregister.
    #[command(subcommand)]
    Runner(forge::agent::RunnerCommand),
    /// The task sandbox's wrapper: restrict this process with Landlock and `no_new_privs`,
    /// then exec the program (started by the server for every task process).
    #[command(name = forge::sandbox::SUBCOMMAND, hide = true)]
    SandboxExec(forge::sandbox::ExecArgs),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Re-seal every secret under a new key in one transaction; the new key replaces the key
    /// file (0600) and the old one is kept as `<key file>.old` until you delete it.
    Rotate {
        /// The database file.
        #[arg(long, env = "FORGE_DB", default_value = DEFAULT_DB)]
        db: PathBuf,
        /// The key file; default: the db path + `.key`.
        #[arg(long, env = "FORGE_SECRET_KEY_FILE")]
        secret_key_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The database file.
    #[arg(long, env = "FORGE_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// The server key (as for `forge serve`); overrides the key file.
    #[arg(long, env = "FORGE_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<forge::config::Secret>,
    /// The server key file; default: the db path + `.key`.
    #[arg(long, env = "FORGE_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from the first line of standard input.
    Add {
        /// Login name.
        #[arg(long)]
        login: String,
        /// Email address.
        #[arg(long)]
        email: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Read the password from standard input (required: never pass it as an argument).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Make the user a system administrator.
        #[arg(long)]
        admin: bool,
        /// The database file.
        #[arg(long, env = "FORGE_DB", default_value = DEFAULT_DB)]
        db: PathBuf,
        /// scrypt cost (log2 N) of the password hash.
        #[arg(long, env = "FORGE_SCRYPT_LOG_N", default_value_t = scrypt::Params::RECOMMENDED_LOG_N)]
        scrypt_log_n: u8,
    },
    /// List users.
    List {
        /// The database file.
        #[arg(long, env = "FORGE_DB", default_value = DEFAULT_DB)]
        db: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread, log or runtime: the wrapper execs the task's program at once.
    if let Command::SandboxExec(args) = &cli.command {
        return forge::sandbox::exec(args);
    }
    let format = match &cli.command {
        Command::Serve(config) => config.log_format,
        _ => LogFormat::Text,
    };
    // `FORGE_LOG` as `Targets` (`info`, `warn,forge=debug`): the same directives people set,
    // without `EnvFilter`'s regex engine, which compiled its patterns at every start (code
    // and memory an idle server kept resident).
    let filter = std::env::var("FORGE_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // Colours only for a person at a terminal: a log file gets plain text.
        LogFormat::Text => registry
            .with(log.with_ansi(
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            ))
            .init(),
        // One object per line, the event's fields at the top level (as log shippers index
        // them), no span context (Forge logs no spans).
        LogFormat::Json => registry
            .with(
                log.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => serve(*config).await,
            Command::User(cmd) => user(cmd).await,
            Command::Key(cmd) => key(cmd),
            Command::Check(args) => check(args),
            Command::Compact { db } => compact(&db),
            Command::Backup(args) => forge::backup::command(args).await,
            Command::Runner(cmd) => match forge::agent::command(cmd).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("forge runner: {e}");
                    ExitCode::from(1)
                }
            },
            Command::SandboxExec(args) => forge::sandbox::exec(&args),
        }
    })
}

/// Prints an error and returns exit code 2 (the setup failed; nothing was changed).
fn fail(message: &str) -> ExitCode {
    eprintln!("forge: {message}");
    ExitCode::from(2)
}

async fn serve(config: Config) -> ExitCode {
    // Signal handlers go in before anything announces readiness: a supervisor (or a test)
    // may send SIGTERM the moment it reads "listening on".
    let shutdown = match shutdown_signal() {
        Ok(signal) => signal,
        Err(e) => return fail(&format!("cannot install the signal handlers: {e}")),
    };
    let listen = config.listen;
    let app = match App::start(config).await {
        Ok(app) => app,
        Err(e) => return fail(&e.to_string()),
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on {listen}: {e}")),
    };
    let addr = listener.local_addr().unwrap_or(listen);
    tracing::info!("forge {} listening on http://{addr}", forge::VERSION);
    forge::serve(listener, app, shutdown).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that completes on the
/// first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

fn open(db: &std::path::Path) -> Result<Store, ExitCode> {
    Store::open(db).map_err(|e| open_failed(db, &e))
}

/// Reports why `db` could not be opened; exit code 2.
fn open_failed(db: &std::path::Path, e: &store::Error) -> ExitCode {
    match e {
        store::Error::Locked => fail(&format!(
            "the database {} is in use by a running Forge server; stop it first",
            db.display()
        )),
        other => fail(&format!(
            "cannot open the database {}: {other}",
            db.display()
        )),
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let mut config = Config::with_db(args.db.clone());
    config.secret_key = args.secret_key;
    config.secret_key_file = args.secret_key_file;
    let cipher = match forge::service::secrets::Cipher::configured(&config) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let key = cipher
        .as_ref()
        .map(|c| c as &dyn forge::store::check::Unseal);
    match forge::store::check::check_file(&args.db, key) {
        Ok(report) => {
            println!("{}: {report}", args.db.display());
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => open_failed(&args.db, &e),
    }
}

fn compact(db: &std::path::Path) -> ExitCode {
    match forge::store::compact::compact_file(db) {
        Ok(sizes) => {
            println!(
                "{}: {} bytes before, {} bytes after compaction",
                db.display(),
                sizes.before,
                sizes.after
            );
            ExitCode::SUCCESS
        }
        Err(e) => open_failed(db, &e),
    }
}

fn key(cmd: KeyCommand) -> ExitCode {
    let KeyCommand::Rotate {
        db,
        secret_key_file,
    } = cmd;
    let store = match open(&db) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut config = Config::with_db(db);
    config.secret_key_file = secret_key_file;
    config.secret_key = std::env::var("FORGE_SECRET_KEY")
        .ok()
        .map(forge::config::Secret);
    match forge::service::secrets::rotate(&config, &store) {
        Ok(done) => {
            println!(
                "re-sealed {} access keys, {} environment passwords, {} task secrets and {} \
                 two-factor secrets under a new key in {}",
                done.resealed.keys,
                done.resealed.environments,
                done.resealed.tasks,
                done.resealed.totp,
                done.key_file.display()
            );
            println!(
                "the old key is kept in {}: delete it once no backup made before now is needed",
                done.old_key_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("key rotation refused: {e}")),
    }
}

async fn user(cmd: UserCommand) -> ExitCode {
    match cmd {
        UserCommand::Add {
            login,
            email,
            name,
            password_stdin: _,
            admin,
            db,
            scrypt_log_n,
        } => {
            let mut password = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut password) {
                return fail(&format!(
                    "cannot read the password from standard input: {e}"
                ));
            }
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            let store = match open(&db) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let mut config = Config::with_db(db);
            config.scrypt_log_n = scrypt_log_n;
            let cipher = match forge::service::secrets::Cipher::load(&config, &store) {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            let services = Services::new(store, cipher, &config);
            let input = NewUserInput {
                username: login,
                email,
                name,
                password,
                admin,
                ..Default::default()
            };
            match services.add_user(input).await {
                Ok(user) => {
                    println!("created user {} (id {})", user.username, user.id);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("cannot create the user: {e}")),
            }
        }
        UserCommand::List { db } => {
            let store = match open(&db) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store.users() {
                Ok(users) => {
                    println!(
                        "{:<6} {:<20} {:<30} {:<20} ADMIN",
                        "ID", "LOGIN", "EMAIL", "NAME"
                    );
                    for u in users {
                        println!(
                            "{:<6} {:<20} {:<30} {:<20} {}",
                            u.id,
                            u.username,
                            u.email,
                            u.name,
                            if u.admin { "yes" } else { "no" }
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("cannot read users: {e}")),
            }
        }
    }
}
