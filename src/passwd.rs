//! `ringmq passwd`: the binary's password-file tool (add, delete, batch), writing
//! `user:$7$iterations$salt$hash` lines that Mosquitto 2.0 reads. The format and the
//! hashing are `ringmq::auth::password`'s; this file owns the IO around them: reading
//! the file and stdin, a random salt from the kernel, and replacing the file with a
//! temporary file and a rename so a crash never leaves it half written.

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use ringmq::auth::password::SALT_LEN;
use ringmq::auth::{PasswordFile, StoredHash};
use ringmq::config::PasswdAction;

fn salt() -> Result<[u8; SALT_LEN], String> {
    let mut s = [0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut s))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(s)
}

fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.contains([':', '\n', '\r']) {
        return Err(format!(
            "user name {user:?}: must be non-empty without ':' or newlines"
        ));
    }
    Ok(())
}

fn hash(password: &str, iterations: u32) -> Result<StoredHash, String> {
    if password.contains(['\n', '\r']) {
        return Err("a password cannot contain a newline".into());
    }
    if iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    Ok(StoredHash::new_pbkdf2(
        password.as_bytes(),
        &salt()?,
        iterations,
    ))
}

fn load(file: &str, create: bool) -> Result<PasswordFile, String> {
    if create {
        return Ok(PasswordFile::default());
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{file}: {e} (add --create to start a new file)"))?;
    PasswordFile::parse(&text).map_err(|e| format!("{file}: {e}"))
}

/// Replaces `file` with `pw`'s text: same directory, mode 0600 (hashes are secrets
/// too: they can be attacked offline), then an atomic rename.
fn store(file: &str, pw: &PasswordFile) -> Result<(), String> {
    let tmp = format!("{file}.tmp-{}", std::process::id());
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(pw.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{file}: {e}")
    })
}

fn run(action: &PasswdAction) -> Result<(), String> {
    match action {
        PasswdAction::Add {
            file,
            user,
            password,
            create,
            iterations,
        } => {
            check_user(user)?;
            let password = match password {
                Some(p) => p.clone(),
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .map_err(|e| format!("reading the password from stdin: {e}"))?;
                    line.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            let mut pw = load(file, *create)?;
            pw.upsert(user, hash(&password, *iterations)?);
            store(file, &pw)
        }
        PasswdAction::Delete { file, user } => {
            let mut pw = load(file, false)?;
            if !pw.remove(user) {
                return Err(format!("{file}: no user {user:?}"));
            }
            store(file, &pw)
        }
        PasswdAction::Batch {
            file,
            create,
            iterations,
        } => {
            let mut pw = load(file, *create)?;
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.map_err(|e| format!("reading stdin: {e}"))?;
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((user, password)) = line.split_once(':') else {
                    return Err(format!("stdin line {}: expected user:password", i + 1));
                };
                check_user(user)?;
                pw.upsert(user, hash(password, *iterations)?);
            }
            store(file, &pw)
        }
    }
}

/// Exit 0 on success; 1 with the file named on any error (nothing is written then).
pub fn main(action: &PasswdAction) -> ExitCode {
    match run(action) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmq passwd: {e}");
            ExitCode::from(1)
        }
    }
}
