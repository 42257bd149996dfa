//! Connection strings: the two syntaxes libpq and tokio-postgres accept (postgres:// URLs and
//! key=value), rendered for libpq tools (pg_dump, pg_restore, psql) and for messages, where a
//! password is never shown. Every module that prints or passes on a connection string uses
//! these, so a secret cannot leak through a forgotten copy.

use std::str::FromStr;

/// `url` with any password replaced by `***`, for messages and logs.
pub fn mask(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        mask_url_form(url)
    } else {
        mask_key_value(url)
    }
}

/// Masks the userinfo password and any `password=` query parameter of a postgres:// URL.
fn mask_url_form(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let (before_query, query) = match rest.find('?') {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    };
    // The last '@' before the query ends the userinfo, whatever the password
    // contains; if a database name held an '@' this over-masks, never under.
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match before_query.rfind('@') {
        Some(at) => {
            let userinfo = &before_query[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&before_query[at..]);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let parts: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

/// Masks the `password` value of a libpq key=value string (quoted values and escapes understood).
fn mask_key_value(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        // Copy whitespace between pairs.
        if chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // Key: up to '=' or whitespace.
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        out.push_str(&key);
        // Whitespace and '=' between key and value.
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '=') {
            out.push(chars[i]);
            i += 1;
        }
        // Value: quoted (with backslash escapes) or up to whitespace.
        let value_start = i;
        let mut unterminated = false;
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            // A quote left open swallows the rest of the string, a password included.
            unterminated = i >= chars.len();
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i = i.min(chars.len());
        }
        if key.eq_ignore_ascii_case("password") || unterminated {
            out.push_str("***");
        } else {
            out.extend(&chars[value_start..i]);
        }
    }
    out
}

/// The libpq key=value string of a parsed connection string, without the password (passed
/// in PGPASSWORD instead). libpq and tokio-postgres accept the same two syntaxes, so parsing
/// once here means both see the same server.
pub fn libpq(pg: &tokio_postgres::Config) -> String {
    let mut parts: Vec<(&str, String)> = Vec::new();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(("host", hosts.join(",")));
    }
    let addrs: Vec<String> = pg.get_hostaddrs().iter().map(|a| a.to_string()).collect();
    if !addrs.is_empty() {
        parts.push(("hostaddr", addrs.join(",")));
    }
    let ports: Vec<String> = pg.get_ports().iter().map(|p| p.to_string()).collect();
    if !ports.is_empty() {
        parts.push(("port", ports.join(",")));
    }
    if let Some(u) = pg.get_user() {
        parts.push(("user", u.to_string()));
    }
    if let Some(d) = pg.get_dbname() {
        parts.push(("dbname", d.to_string()));
    }
    if let Some(o) = pg.get_options() {
        parts.push(("options", o.to_string()));
    }
    if let Some(t) = pg.get_connect_timeout() {
        parts.push(("connect_timeout", t.as_secs().max(1).to_string()));
    }
    if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        parts.push(("sslmode", "disable".to_string()));
    }
    parts
        .iter()
        .map(|(k, v)| format!("{k}={}", value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The connection string for messages: libpq form, `password=***` when there is one.
pub fn display(pg: &tokio_postgres::Config) -> String {
    let mut s = libpq(pg);
    if pg.get_password().is_some() {
        s.push_str(" password=***");
    }
    s
}

/// `url` for messages and `config check`: parsed and re-rendered with the password masked;
/// a string that does not parse is not echoed (it may hold a password).
pub fn render_masked(url: &str) -> String {
    match tokio_postgres::Config::from_str(url) {
        Ok(pg) => display(&pg),
        Err(_) => "(unparsable connection string)".to_string(),
    }
}

/// libpq values need quotes when empty or holding spaces, quotes or backslashes.
pub fn value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\']) {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An SQL identifier, double-quoted (for statements that cannot take it as a parameter).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_keeps_the_server_and_drops_the_password() {
        let pg = tokio_postgres::Config::from_str(
            "postgres://bb:s3cr%20t@db.example:6432/arch%20ive?connect_timeout=5&sslmode=disable",
        )
        .expect("url parses");
        let info = libpq(&pg);
        assert_eq!(
            info,
            "host=db.example port=6432 user=bb dbname='arch ive' connect_timeout=5 sslmode=disable"
        );
        assert_eq!(pg.get_password(), Some(&b"s3cr t"[..]));
        assert!(display(&pg).ends_with(" password=***"));
        let again = tokio_postgres::Config::from_str(&info).expect("rendered form parses");
        assert_eq!(again.get_dbname(), Some("arch ive"));
        assert_eq!(again.get_ports(), &[6432]);
    }

    #[test]
    fn masking_never_echoes_secrets() {
        assert_eq!(
            render_masked(
                "host=pgbouncer port=5432 user=bigbrotr password=hunter2 dbname=bigbrotr"
            ),
            "host=pgbouncer port=5432 user=bigbrotr dbname=bigbrotr password=***"
        );
        assert!(!render_masked("host='unterminated password=hunter2").contains("hunter2"));
    }

    #[test]
    fn masks_url_passwords() {
        assert_eq!(
            mask("postgres://bb:s3cr3t@db:5432/archive"),
            "postgres://bb:***@db:5432/archive"
        );
        assert_eq!(
            mask("postgresql://bb:p@ss/w0rd@db/archive?sslmode=disable"),
            "postgresql://bb:***@db/archive?sslmode=disable"
        );
        assert_eq!(
            mask("postgres://bb@db/archive?password=x&application_name=a"),
            "postgres://bb@db/archive?password=***&application_name=a"
        );
        assert_eq!(mask("postgres://db/archive"), "postgres://db/archive");
    }

    #[test]
    fn masks_key_value_passwords() {
        assert_eq!(
            mask("host=db user=bb password=s3cr3t dbname=archive"),
            "host=db user=bb password=*** dbname=archive"
        );
        assert_eq!(
            mask("host=db password = 'a b\\' c' dbname=x"),
            "host=db password = *** dbname=x"
        );
        assert_eq!(mask("host=db PASSWORD=x\\ y"), "host=db PASSWORD=***");
        assert_eq!(mask("host=/tmp port=5432"), "host=/tmp port=5432");
        assert_eq!(mask("password="), "password=***");
        assert!(!mask("host='unterminated password=hunter2").contains("hunter2"));
    }
}
