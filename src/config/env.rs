//! `${VAR}` and `${VAR:-default}` substitution, done on the file text before parsing.
//!
//! Only names that look like environment variables (`[A-Za-z_][A-Za-z0-9_]*`) are
//! substituted. Template placeholders that transforms evaluate per request
//! (`${claim.sub}`, `${header.X}`, `${request_id}`, `${client_ip}`, `${consumer}`, `${route}`,
//! `${upstream}`) are left alone, as are comments, so the commented examples of
//! CONFIG.md do not demand variables. `$${` writes a literal `${`.

/// Placeholders that belong to request-time templates, never to the environment.
const TEMPLATE_NAMES: &[&str] = &["request_id", "client_ip", "consumer", "route", "upstream"];

#[derive(Debug, Clone, PartialEq)]
pub struct EnvError {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

pub fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<EnvError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        substitute_line(line, line_no + 1, lookup, &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn substitute_line(
    line: &str,
    line_no: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    errors: &mut Vec<EnvError>,
) {
    let bytes = line.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match (quote, b) {
            (None, b'#') if i == 0 || bytes[i - 1].is_ascii_whitespace() => break,
            (None, b'"') | (None, b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (_, b'$') if bytes.get(i + 1) == Some(&b'$') && bytes.get(i + 2) == Some(&b'{') => {
                out.push_str(&line[copied..i]);
                out.push_str("${");
                i += 3;
                copied = i;
                continue;
            }
            (_, b'$') if bytes.get(i + 1) == Some(&b'{') => {
                if let Some(end) = line[i + 2..].find('}') {
                    let inner = &line[i + 2..i + 2 + end];
                    let (name, default) = match inner.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (inner, None),
                    };
                    if is_env_name(name) && !TEMPLATE_NAMES.contains(&name) {
                        out.push_str(&line[copied..i]);
                        match lookup(name).or_else(|| default.map(str::to_string)) {
                            Some(value) => out.push_str(&value),
                            None => errors.push(EnvError {
                                name: name.to_string(),
                                line: line_no,
                                column: i + 1,
                            }),
                        }
                        i += 2 + end + 1;
                        copied = i;
                        continue;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&line[copied..]);
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("9000".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_and_defaults() {
        let text = "a: ${PORT}\nb: ${MISSING:-x}\nc: ${EMPTY}\n";
        assert_eq!(substitute(text, &env).unwrap(), "a: 9000\nb: x\nc: \n");
    }

    #[test]
    fn unset_without_default_is_an_error_with_position() {
        let errs = substitute("a: 1\nb: \"${NOPE}\"\n", &env).unwrap_err();
        assert_eq!(
            errs,
            vec![EnvError {
                name: "NOPE".into(),
                line: 2,
                column: 5
            }]
        );
    }

    #[test]
    fn templates_comments_and_escapes_are_left_alone() {
        let text =
            "h: \"${claim.sub} ${request_id}\" # ${SECRET}\n# secret: ${JWT_SECRET}\nx: $${PORT}\n";
        assert_eq!(
            substitute(text, &env).unwrap(),
            "h: \"${claim.sub} ${request_id}\" # ${SECRET}\n# secret: ${JWT_SECRET}\nx: ${PORT}\n"
        );
    }
}
