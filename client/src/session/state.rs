//! [`SessionState`]: what a durable session needs to outlive its process,
//! and its file.
//!
//! # File format
//! Plain text, one `key=value` per line, `#` comments, in this order:
//!
//! ```text
//! # relayhub-client session state; the token is a bearer secret
//! format=1
//! user=7
//! token=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
//! delivered_seq=12
//! next_message_id=1025
//! ```
//!
//! [`save`](SessionState::save) writes a temporary file in the same
//! directory with mode 0600 (the token lets anyone who reads it take the
//! session over), syncs it, renames it over the target and syncs the
//! directory: a crash leaves the old file or the new one, never a torn one.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use relayhub_protocol::{ResumeToken, RESUME_TOKEN_BYTES};

use crate::event::UserId;

/// Largest state file [`SessionState::load`] reads: 4 KiB (a valid one is
/// about 150 bytes); a larger file is refused as not a state file.
pub const STATE_FILE_BYTES_MAX: u64 = 4096;

/// The format version written on the `format=` line.
const STATE_FORMAT: u32 = 1;

/// Permissions of a state file: owner read and write only.
#[cfg(unix)]
const STATE_FILE_MODE: u32 = 0o600;

/// A durable session, as saved between processes. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionState {
    /// The session's user id.
    pub user: UserId,
    /// The resume token of the session's latest `WelcomeV2`.
    pub token: ResumeToken,
    /// The highest inbox `seq` handed to the application and acked: on the
    /// next resume, entries at or below it are dropped (and acked again).
    pub delivered_seq: u64,
    /// The next message id to use: every lower id may have been used.
    pub next_message_id: u64,
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionState")
            .field("user", &self.user)
            .field("token", &"<secret>")
            .field("delivered_seq", &self.delivered_seq)
            .field("next_message_id", &self.next_message_id)
            .finish()
    }
}

/// Why a state file could not be read or written.
#[derive(Debug)]
pub enum StateError {
    /// Reading, writing, syncing or renaming failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is larger than [`STATE_FILE_BYTES_MAX`].
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line is not what the format says.
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A required key is missing.
    Missing {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io { path, source } => {
                write!(f, "session file {}: {source}", path.display())
            }
            StateError::TooLarge { path } => write!(
                f,
                "session file {} is larger than {STATE_FILE_BYTES_MAX} bytes: not a session file",
                path.display()
            ),
            StateError::Parse { path, line, reason } => {
                write!(f, "session file {}, line {line}: {reason}", path.display())
            }
            StateError::Missing { path, key } => {
                write!(f, "session file {} has no `{key}=` line", path.display())
            }
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl SessionState {
    /// The file's text.
    pub fn to_text(&self) -> String {
        format!(
            "# relayhub-client session state; the token is a bearer secret\n\
             format={STATE_FORMAT}\n\
             user={}\n\
             token={}\n\
             delivered_seq={}\n\
             next_message_id={}\n",
            self.user,
            hex(&self.token),
            self.delivered_seq,
            self.next_message_id
        )
    }

    /// Parses a file's text; `path` is for the error messages.
    pub fn from_text(text: &str, path: &Path) -> Result<SessionState, StateError> {
        let parse_error = |line, reason| StateError::Parse {
            path: path.to_owned(),
            line,
            reason,
        };
        let (mut format, mut user, mut token, mut delivered, mut next) =
            (None, None, None, None, None);
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| parse_error(number, "expected key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            let number_value = || {
                value
                    .parse::<u64>()
                    .map_err(|_| parse_error(number, "expected a decimal number"))
            };
            let slot = match key {
                "format" => &mut format,
                "user" => &mut user,
                "delivered_seq" => &mut delivered,
                "next_message_id" => &mut next,
                "token" => {
                    if token.is_some() {
                        return Err(parse_error(number, "the key appears twice"));
                    }
                    let parsed = unhex(value)
                        .ok_or_else(|| parse_error(number, "expected 32 hex digits"))?;
                    token = Some(parsed);
                    continue;
                }
                _ => return Err(parse_error(number, "unknown key")),
            };
            if slot.is_some() {
                return Err(parse_error(number, "the key appears twice"));
            }
            *slot = Some((number, number_value()?));
        }
        let missing = |key| StateError::Missing {
            path: path.to_owned(),
            key,
        };
        let (format_line, format) = format.ok_or_else(|| missing("format"))?;
        if format != u64::from(STATE_FORMAT) {
            return Err(parse_error(format_line, "unknown format version"));
        }
        let (user_line, user) = user.ok_or_else(|| missing("user"))?;
        if user == 0 {
            return Err(parse_error(user_line, "user 0 does not exist"));
        }
        let token = token.ok_or_else(|| missing("token"))?;
        if token == [0; RESUME_TOKEN_BYTES] {
            return Err(StateError::Missing {
                path: path.to_owned(),
                key: "token (it is all zero)",
            });
        }
        let (_, delivered_seq) = delivered.ok_or_else(|| missing("delivered_seq"))?;
        let (_, next_message_id) = next.ok_or_else(|| missing("next_message_id"))?;
        Ok(SessionState {
            user,
            token,
            delivered_seq,
            next_message_id: next_message_id.max(1),
        })
    }

    /// Reads the state saved at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<SessionState, StateError> {
        let path = path.as_ref();
        let io_error = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let mut text = String::new();
        file.take(STATE_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(io_error)?;
        if text.len() as u64 > STATE_FILE_BYTES_MAX {
            return Err(StateError::TooLarge {
                path: path.to_owned(),
            });
        }
        SessionState::from_text(&text, path)
    }

    /// Like [`load`](Self::load), `Ok(None)` when the file does not exist.
    pub fn load_if_exists(path: impl AsRef<Path>) -> Result<Option<SessionState>, StateError> {
        match SessionState::load(path) {
            Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Saves the state at `path` atomically: a temporary file next to it
    /// (mode 0600 on Unix), synced, renamed over `path`, then the directory
    /// synced (best effort: some filesystems refuse to sync a directory).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), StateError> {
        let path = path.as_ref();
        let io_error = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let temp = temp_path(path);
        let written =
            write_synced(&temp, self.to_text().as_bytes()).and_then(|()| fs::rename(&temp, path));
        if let Err(error) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_error(error));
        }
        if let Ok(dir) = File::open(parent_dir(path)) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// `dir/.name.tmp.PID`: in the same directory (a rename stays on one
/// filesystem), hidden, and distinct per process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "session".into(), |name| name.to_string_lossy());
    parent_dir(path).join(format!(".{name}.tmp.{}", std::process::id()))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(STATE_FILE_MODE);
    }
    let mut file = options.open(path)?;
    // A leftover temporary file keeps its old mode: set it again.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(STATE_FILE_MODE))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<ResumeToken> {
    if text.len() != 2 * RESUME_TOKEN_BYTES || !text.is_ascii() {
        return None;
    }
    let mut token = [0; RESUME_TOKEN_BYTES];
    for (byte, pair) in token.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionState {
        SessionState {
            user: 7,
            token: std::array::from_fn(|index| 0xa0 + index as u8),
            delivered_seq: 12,
            next_message_id: 1025,
        }
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "relayhub-client-state-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn text_round_trip_and_layout() {
        let state = sample();
        let text = state.to_text();
        assert_eq!(
            text,
            "# relayhub-client session state; the token is a bearer secret\n\
             format=1\nuser=7\ntoken=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf\n\
             delivered_seq=12\nnext_message_id=1025\n"
        );
        assert_eq!(
            SessionState::from_text(&text, Path::new("f")).unwrap(),
            state
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let debug = format!("{:?}", sample());
        assert!(
            debug.contains("<secret>") && !debug.contains("a0a1"),
            "{debug}"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let path = Path::new("s");
        let parse = |text: &str| SessionState::from_text(text, path).unwrap_err().to_string();
        let good = sample().to_text();
        assert_eq!(
            parse(&good.replace("user=7", "user=x")),
            "session file s, line 3: expected a decimal number"
        );
        assert_eq!(
            parse(&good.replace("format=1", "format=2")),
            "session file s, line 2: unknown format version"
        );
        assert!(parse(&good.replace("token=a0", "token=")).contains("32 hex digits"));
        assert!(parse(&format!("{good}user=8\n")).contains("appears twice"));
        assert!(parse(&format!("{good}colour=blue\n")).contains("unknown key"));
        assert_eq!(
            parse(&good.replace("delivered_seq=12\n", "")),
            "session file s has no `delivered_seq=` line"
        );
        assert!(parse(&good.replace("user=7", "user=0")).contains("user 0"));
        assert!(parse("garbage").contains("key=value"));
    }

    #[test]
    fn save_then_load_with_mode_0600() {
        let dir = scratch_dir("roundtrip");
        let path = dir.join("bob.session");
        assert!(SessionState::load_if_exists(&path).unwrap().is_none());
        let state = sample();
        state.save(&path).unwrap();
        assert_eq!(SessionState::load(&path).unwrap(), state);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let newer = SessionState {
            delivered_seq: 13,
            ..state
        };
        newer.save(&path).unwrap();
        assert_eq!(SessionState::load_if_exists(&path).unwrap(), Some(newer));
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_is_atomic_a_failed_write_keeps_the_old_file() {
        let dir = scratch_dir("atomic");
        let path = dir.join("s");
        sample().save(&path).unwrap();
        // Make the rename fail: the temporary name is a directory.
        fs::create_dir(temp_path(&path)).unwrap();
        let error = SessionState {
            delivered_seq: 99,
            ..sample()
        }
        .save(&path)
        .unwrap_err();
        assert!(matches!(error, StateError::Io { .. }), "{error}");
        assert_eq!(
            SessionState::load(&path).unwrap(),
            sample(),
            "old file intact"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_temporary_file_never_replaces_the_state() {
        // What a crash mid-write leaves: a partial temporary file. The state
        // file is untouched, and the next save replaces the leftover.
        let dir = scratch_dir("torn");
        let path = dir.join("s");
        sample().save(&path).unwrap();
        fs::write(temp_path(&path), "format=1\nuser=").unwrap();
        assert_eq!(SessionState::load(&path).unwrap(), sample());
        let newer = SessionState {
            next_message_id: 2049,
            ..sample()
        };
        newer.save(&path).unwrap();
        assert_eq!(SessionState::load(&path).unwrap(), newer);
        assert!(!temp_path(&path).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = scratch_dir("large");
        let path = dir.join("s");
        fs::write(&path, "#".repeat(STATE_FILE_BYTES_MAX as usize + 1)).unwrap();
        assert!(matches!(
            SessionState::load(&path),
            Err(StateError::TooLarge { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
