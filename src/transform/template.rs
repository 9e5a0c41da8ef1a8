//! Header and query templates, compiled once when the config is built into literal and
//! variable segments: `${claim.NAME}`, `${header.NAME}`, `${request_id}`, `${client_ip}`,
//! `${consumer}`, `${route}`, `${upstream}`; `$$` is a literal `$`. Rendering never produces the literal
//! `${...}`: when a variable has no value the whole template renders to `None` and the
//! header (or query parameter) is left out.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::auth::claim_text;

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Literal(String),
    Claim(String),
    Header(HeaderName),
    RequestId,
    ClientIp,
    Consumer,
    Route,
    Upstream,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
    /// A template with no variables is pre-rendered.
    constant: Option<HeaderValue>,
}

/// What a template may refer to.
pub struct Vars<'a> {
    pub claims: Option<&'a Map<String, Value>>,
    /// `${header.NAME}`: the request's headers for request transforms (before the
    /// transform runs), the upstream response's for response transforms.
    pub headers: &'a HeaderMap,
    pub request_id: &'a HeaderValue,
    pub client_ip: IpAddr,
    /// The authenticated consumer's name.
    pub consumer: Option<&'a str>,
    pub route: &'a str,
    pub upstream: &'a str,
}

impl Template {
    pub fn compile(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            literal.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
                continue;
            }
            let Some(inner) = after.strip_prefix('{') else {
                literal.push('$');
                rest = after;
                continue;
            };
            let end = inner
                .find('}')
                .ok_or_else(|| format!("unterminated ${{...}} in {text:?}"))?;
            let name = &inner[..end];
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(variable(name).map_err(|e| format!("{e} in {text:?}"))?);
            rest = &inner[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        let constant = match segments.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Segment::Literal(l)] => Some(
                HeaderValue::from_str(l).map_err(|_| format!("invalid header value {text:?}"))?,
            ),
            _ => None,
        };
        Ok(Template { segments, constant })
    }

    /// Renders to a string, or `None` when a variable has no value.
    pub fn render_string(&self, vars: &Vars<'_>) -> Option<String> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Claim(name) => out.push_str(&claim_text(vars.claims?.get(name)?)?),
                Segment::Header(name) => {
                    out.push_str(vars.headers.get(name)?.to_str().ok()?);
                }
                Segment::RequestId => out.push_str(vars.request_id.to_str().ok()?),
                Segment::ClientIp => {
                    let _ = write!(out, "{}", vars.client_ip);
                }
                Segment::Consumer => out.push_str(vars.consumer?),
                Segment::Route => out.push_str(vars.route),
                Segment::Upstream => out.push_str(vars.upstream),
            }
        }
        Some(out)
    }

    /// Renders to a header value. Values that are not valid header values (a claim with
    /// a newline, say) are left out rather than passed on.
    pub fn render(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        if let Some(c) = &self.constant {
            return Some(c.clone());
        }
        HeaderValue::from_str(&self.render_string(vars)?).ok()
    }
}

fn variable(name: &str) -> Result<Segment, String> {
    if let Some(claim) = name.strip_prefix("claim.") {
        if claim.is_empty() {
            return Err("empty claim name".into());
        }
        return Ok(Segment::Claim(claim.to_string()));
    }
    if let Some(header) = name.strip_prefix("header.") {
        return HeaderName::from_bytes(header.as_bytes())
            .map(Segment::Header)
            .map_err(|_| format!("invalid header name {header:?}"));
    }
    match name {
        "request_id" => Ok(Segment::RequestId),
        "client_ip" => Ok(Segment::ClientIp),
        "consumer" => Ok(Segment::Consumer),
        "route" => Ok(Segment::Route),
        "upstream" => Ok(Segment::Upstream),
        other => Err(format!(
            "unknown template variable ${{{other}}} (use claim.NAME, header.NAME, request_id, client_ip, consumer, route, upstream)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(
        claims: Option<&'a Map<String, Value>>,
        headers: &'a HeaderMap,
        id: &'a HeaderValue,
    ) -> Vars<'a> {
        Vars {
            claims,
            headers,
            request_id: id,
            client_ip: "10.1.2.3".parse().unwrap(),
            consumer: Some("mobile-app"),
            route: "legacy",
            upstream: "monolith",
        }
    }

    #[test]
    fn renders_every_variable() {
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from("u-7"));
        claims.insert("level".into(), Value::from(3));
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        let id = HeaderValue::from_static("rid-1");
        let t = Template::compile(
            "${claim.sub}/${claim.level}/${header.X-Tenant}/${request_id}/${client_ip}/${route}/${upstream}/$$5",
        )
        .unwrap();
        assert_eq!(
            t.render(&vars(Some(&claims), &headers, &id)).unwrap(),
            "u-7/3/acme/rid-1/10.1.2.3/legacy/monolith/$5"
        );
    }

    #[test]
    fn missing_values_leave_the_header_out() {
        let headers = HeaderMap::new();
        let id = HeaderValue::from_static("r");
        let t = Template::compile("user-${claim.sub}").unwrap();
        assert_eq!(t.render(&vars(None, &headers, &id)), None);
        let mut claims = Map::new();
        claims.insert("name".into(), Value::from("evil\r\nx-admin: 1"));
        let t = Template::compile("${claim.name}").unwrap();
        assert_eq!(t.render(&vars(Some(&claims), &headers, &id)), None);
        let t = Template::compile("${header.x-missing}").unwrap();
        assert_eq!(t.render(&vars(Some(&claims), &headers, &id)), None);
    }

    #[test]
    fn claims_render_by_the_one_claim_text_rule() {
        let headers = HeaderMap::new();
        let id = HeaderValue::from_static("r");
        let mut claims = Map::new();
        claims.insert("roles".into(), serde_json::json!(["admin", 2, true]));
        claims.insert("profile".into(), serde_json::json!({"a": 1}));
        let t = Template::compile("${claim.roles}").unwrap();
        assert_eq!(
            t.render(&vars(Some(&claims), &headers, &id)),
            Some(HeaderValue::from_static("admin,2,true"))
        );
        let t = Template::compile("${claim.profile}").unwrap();
        assert_eq!(t.render(&vars(Some(&claims), &headers, &id)), None);
    }

    #[test]
    fn constants_and_errors() {
        let t = Template::compile("2.0").unwrap();
        assert_eq!(t.constant, Some(HeaderValue::from_static("2.0")));
        assert!(Template::compile("${nope}").is_err());
        assert!(Template::compile("${claim.sub").is_err());
        assert!(Template::compile("${header.bad name}").is_err());
        assert_eq!(
            Template::compile("a$b").unwrap().constant,
            Some(HeaderValue::from_static("a$b"))
        );
    }
}
