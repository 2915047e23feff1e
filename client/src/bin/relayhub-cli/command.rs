//! The interactive mode's command language: one command per line.

use relayhub_client::UserId;

/// What `help` prints.
pub const HELP: &str = "\
commands:
  send <ids> <text>   relay text to users, e.g. `send 2,3 hello world`
  list [after]        list connected users (ids above `after`, one page)
  id                  print your user id
  echo <text>         round-trip text through the hub
  help                this text
  quit                wait briefly for replies, then exit (also: end of input)
deliveries are printed as they arrive: `from 2: hello`";

/// One parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `send 2,3 hello world`: relay the rest of the line.
    Send {
        /// Receivers.
        to: Vec<UserId>,
        /// Everything after the ids and the spaces that follow them.
        body: String,
    },
    /// `list [after]`: one page of ids above `after`.
    List {
        /// 0 when omitted.
        after: UserId,
    },
    /// `id`: who am I.
    Identity,
    /// `echo text`: round trip.
    Echo(String),
    /// `help`.
    Help,
    /// `quit`.
    Quit,
    /// A blank line.
    Empty,
}

/// Parses one line; the error is a message for the user.
pub fn parse_line(line: &str) -> Result<Line, String> {
    let line = line.trim_end_matches(['\r', '\n']).trim_start();
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    match word {
        "" => Ok(Line::Empty),
        "send" | "s" => parse_send(rest),
        "list" | "ls" => parse_list(rest),
        "id" | "identity" | "whoami" => no_arguments(rest, Line::Identity),
        "echo" => Ok(Line::Echo(rest.to_owned())),
        "help" | "?" => Ok(Line::Help),
        "quit" | "exit" | "q" => no_arguments(rest, Line::Quit),
        other => Err(format!("unknown command `{other}`: type `help`")),
    }
}

fn parse_send(rest: &str) -> Result<Line, String> {
    let (ids, body) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if ids.is_empty() {
        return Err("usage: send <ids> <text>, e.g. `send 2,3 hello`".to_owned());
    }
    Ok(Line::Send {
        to: parse_ids(ids)?,
        body: body.trim_start().to_owned(),
    })
}

fn parse_list(rest: &str) -> Result<Line, String> {
    if rest.is_empty() {
        return Ok(Line::List { after: 0 });
    }
    let after = rest
        .trim_end()
        .parse()
        .map_err(|_| format!("usage: list [after], e.g. `list 100` (not `{rest}`)"))?;
    Ok(Line::List { after })
}

fn no_arguments(rest: &str, line: Line) -> Result<Line, String> {
    if !rest.trim_end().is_empty() {
        return Err(format!("this command takes no arguments (got `{rest}`)"));
    }
    Ok(line)
}

/// `2,3,10` into ids.
pub fn parse_ids(ids: &str) -> Result<Vec<UserId>, String> {
    ids.split(',')
        .map(|id| {
            id.parse().map_err(|_| {
                format!(
                    "bad receiver list `{ids}`: expected user ids separated by commas, e.g. 2,3"
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(to: &[UserId], body: &str) -> Line {
        Line::Send {
            to: to.to_vec(),
            body: body.to_owned(),
        }
    }

    #[test]
    fn send_keeps_the_rest_of_the_line() {
        assert_eq!(
            parse_line("send 2,3 hello world\n"),
            Ok(send(&[2, 3], "hello world"))
        );
        assert_eq!(
            parse_line("  send 2   spaced  out  "),
            Ok(send(&[2], "spaced  out  "))
        );
        assert_eq!(parse_line("send 7"), Ok(send(&[7], "")));
        assert_eq!(parse_line("s 1 x\r\n"), Ok(send(&[1], "x")));
    }

    #[test]
    fn send_refuses_bad_ids() {
        assert!(parse_line("send").unwrap_err().starts_with("usage: send"));
        assert!(parse_line("send 2,,3 hi")
            .unwrap_err()
            .contains("bad receiver list"));
        assert!(parse_line("send two hi").is_err());
        assert!(parse_line("send 2, 3 hi").is_err());
    }

    #[test]
    fn other_commands() {
        assert_eq!(parse_line("list"), Ok(Line::List { after: 0 }));
        assert_eq!(parse_line("list 40 "), Ok(Line::List { after: 40 }));
        assert!(parse_line("list x").is_err());
        assert_eq!(parse_line("id"), Ok(Line::Identity));
        assert_eq!(parse_line("whoami"), Ok(Line::Identity));
        assert!(parse_line("id 3").is_err());
        assert_eq!(parse_line("echo  a b"), Ok(Line::Echo("a b".to_owned())));
        assert_eq!(parse_line("echo"), Ok(Line::Echo(String::new())));
        assert_eq!(parse_line("help"), Ok(Line::Help));
        assert_eq!(parse_line("quit"), Ok(Line::Quit));
        assert_eq!(parse_line("exit\n"), Ok(Line::Quit));
        assert_eq!(parse_line("   \n"), Ok(Line::Empty));
        assert_eq!(
            parse_line("frobnicate 1"),
            Err("unknown command `frobnicate`: type `help`".to_owned())
        );
    }
}
