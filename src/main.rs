//! The `forge` binary: `forge serve`, `forge user add`, `forge user list`, `forge backup`.

#![forbid(unsafe_code)]
#![warn(clippy::pedantic)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use forge::config::DEFAULT_DB;
use forge::service::{NewUserInput, Services};
use forge::store::{self, Store};
use forge::{App, Config};

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
    /// Write a backup of the database: from a running server (--url), or of a stopped server's
    /// file (--db).
    Backup(forge::backup::BackupArgs),
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FORGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            Command::Backup(args) => forge::backup::command(args).await,
        }
    })
}

/// Prints an error and returns exit code 2 (the setup failed; nothing was changed).
fn fail(message: &str) -> ExitCode {
    eprintln!("forge: {message}");
    ExitCode::from(2)
}

async fn serve(config: Config) -> ExitCode {
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
    forge::serve(listener, app, shutdown_signal()).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

fn open(db: &std::path::Path) -> Result<Store, ExitCode> {
    Store::open(db).map_err(|e| match e {
        store::Error::Locked => fail(&format!(
            "the database {} is in use by a running Forge server; stop it first",
            db.display()
        )),
        other => fail(&format!(
            "cannot open the database {}: {other}",
            db.display()
        )),
    })
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
