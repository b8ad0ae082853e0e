//! `baton key`: keep API keys in the OS keychain, never in files.
//!
//! Without a name it is the balancer's own key; with one, a worker's key,
//! referenced from the workers file as `{"keychain": "NAME"}`. The two
//! live in separate namespaces, so no worker's key can be or replace
//! Baton's own.

use std::io::BufRead;
use std::process::ExitCode;

use baton::secrets::{self, Own};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Store a key read from standard input (no NAME: the balancer's own key;
    /// NAME: a worker's key, referenced as {"keychain": "NAME"})
    Set { name: Option<String> },
    /// Delete a stored key (no NAME: the balancer's own)
    Delete { name: Option<String> },
    /// Say whether a key is stored (never prints it)
    Status { name: Option<String> },
}

/// Which key a command is about, as the user sees it.
enum Which {
    Balancer,
    Worker(String),
}

impl Which {
    fn of(name: Option<String>) -> anyhow::Result<Which> {
        match name {
            None => Ok(Which::Balancer),
            Some(n) if Own::named(&n) == Some(Own::BalancerKey) => anyhow::bail!(
                "`{n}` is the balancer's own key; run the command without a name to manage it"
            ),
            Some(n) if Own::named(&n).is_some() => {
                anyhow::bail!("`{n}` is Baton's own entry; `baton key` does not manage it")
            }
            Some(n) => Ok(Which::Worker(n)),
        }
    }

    fn label(&self) -> String {
        match self {
            Which::Balancer => "the balancer's key".into(),
            Which::Worker(n) => format!("`{n}`"),
        }
    }

    fn get(&self) -> Result<String, secrets::SecretError> {
        match self {
            Which::Balancer => secrets::get_own(Own::BalancerKey),
            Which::Worker(n) => secrets::get_worker(n),
        }
    }
}

pub fn run(a: KeyArgs) -> anyhow::Result<ExitCode> {
    match a.action {
        Action::Set { name } => {
            let which = Which::of(name)?;
            eprintln!("Paste {} and press Enter:", which.label());
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let key = line.trim();
            if key.is_empty() {
                anyhow::bail!("no key given on standard input; nothing stored");
            }
            match &which {
                Which::Balancer => secrets::set_own(Own::BalancerKey, key)?,
                Which::Worker(n) => secrets::set_worker(n, key)?,
            }
            println!(
                "Stored {} in the keychain (service `{}`).",
                which.label(),
                secrets::SERVICE
            );
        }
        Action::Delete { name } => {
            let which = Which::of(name)?;
            match &which {
                Which::Balancer => secrets::delete_own(Own::BalancerKey)?,
                Which::Worker(n) => secrets::delete_worker(n)?,
            }
            println!("Deleted {} from the keychain.", which.label());
        }
        Action::Status { name } => {
            let which = Which::of(name)?;
            match which.get() {
                Ok(_) => println!("{} is stored in the keychain.", which.label()),
                Err(secrets::SecretError::NotInKeychain(_)) => {
                    println!("{} is not stored.", which.label());
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
