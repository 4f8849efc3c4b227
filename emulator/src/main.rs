//! Emulator of the WhatsApp Business API on-premises client and of the
//! WhatsApp servers it connects to. One binary plays every role; the role is
//! chosen from the environment as the real images choose it.

mod api;
mod appsettings;
mod auth;
mod backup;
mod catalog;
mod config;
mod db;
mod error;
mod health;
mod instant;
mod link;
mod node;
mod roles;
mod schema;
mod tls;

use clap::{Parser, Subcommand};

pub use error::Error;

use config::{Config, Role};

#[derive(Parser)]
#[command(name = "whatsapp-emulator", version, about = "Emulator of the WhatsApp Business API on-premises client")]
struct Cli {
    /// Overrides the role picked from WA_EMULATOR_IMAGE, WA_DB_UPGRADE and WA_MASTER_NODE.
    #[arg(long, value_enum)]
    role: Option<Role>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the stand-in for WhatsApp's servers.
    Gateway {
        /// Address to listen on.
        #[arg(long, env = "WA_EMULATOR_GATEWAY_LISTEN", default_value = "0.0.0.0:5222")]
        listen: String,
    },
    /// Prints a certificate for a number, as the gateway's `POST /admin/certs` issues it.
    Cert {
        /// The phone number, country code first (`+15550001111`).
        #[arg(long)]
        number: String,
        /// Days of validity from now; negative for an expired certificate.
        #[arg(long, default_value_t = 365, allow_negative_numbers = true)]
        valid_days: i64,
    },
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Some(Command::Gateway { listen }) => return roles::gateway::run(&listen).await,
        Some(Command::Cert { number, valid_days }) => {
            let expires = instant::days_after(jiff::Timestamp::now(), valid_days);
            println!("{}", roles::gateway::issue_cert(&number, expires));
            return Ok(());
        }
        None => {}
    }
    let role = match cli.role {
        Some(r) => r,
        None => config::role_from_env()?,
    };
    if role == Role::Gateway {
        let listen = std::env::var("WA_EMULATOR_GATEWAY_LISTEN").unwrap_or_else(|_| "0.0.0.0:5222".into());
        return roles::gateway::run(&listen).await;
    }
    let cfg = Config::from_env()?;
    api::set_version(&cfg.version);
    tracing::info!(role = ?role, version = %cfg.version, multiconnect = cfg.multiconnect, "WhatsApp Business API client (emulated)");
    match role {
        Role::Coreapp => roles::coreapp::run(cfg).await,
        Role::Master => roles::master::run(cfg).await,
        Role::Upgrade => roles::upgrade::run(cfg).await,
        Role::Webapp => roles::webapp::run(cfg).await,
        Role::Gateway => unreachable!("handled above"),
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    sqlx::any::install_default_drivers();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}
