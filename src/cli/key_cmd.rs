//! `baton key`: keep API keys in the OS keychain, never in files.

use std::io::BufRead;
use std::process::ExitCode;

use baton::secrets;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Store a key read from standard input (default entry: the balancer's own key)
    Set {
        #[arg(default_value = secrets::BALANCER_KEY_ENTRY)]
        name: String,
    },
    /// Delete a stored key
    Delete {
        #[arg(default_value = secrets::BALANCER_KEY_ENTRY)]
        name: String,
    },
    /// Say whether a key is stored (never prints it)
    Status {
        #[arg(default_value = secrets::BALANCER_KEY_ENTRY)]
        name: String,
    },
}

pub fn run(a: KeyArgs) -> anyhow::Result<ExitCode> {
    match a.action {
        Action::Set { name } => {
            eprintln!("Paste the key for `{name}` and press Enter:");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let key = line.trim();
            if key.is_empty() {
                anyhow::bail!("no key given on standard input; nothing stored");
            }
            secrets::set(&name, key)?;
            println!(
                "Stored `{name}` in the keychain (service `{}`).",
                secrets::SERVICE
            );
        }
        Action::Delete { name } => {
            secrets::delete(&name)?;
            println!("Deleted `{name}` from the keychain.");
        }
        Action::Status { name } => match secrets::get(&name) {
            Ok(_) => println!("`{name}` is stored in the keychain."),
            Err(secrets::SecretError::NotInKeychain(_)) => {
                println!("`{name}` is not stored.");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(ExitCode::SUCCESS)
}
