//! `${VAR}` and `${VAR:-default}` in string values, with the shell's meaning of `:-`.

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
pub(super) fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err("unclosed `${` (write `$${` for a literal `${`)".to_owned());
            };
            let (name, default) = match body[..end].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&body[..end], None),
            };
            if !valid_env_name(name) {
                return Err(format!(
                    "`${{{name}}}` is not a variable reference (names are letters, digits and _)"
                ));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ORDERS_TOKEN" => Some("tok-123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        let subst = |s: &str| interpolate(s, &env);
        assert_eq!(subst("Bearer ${ORDERS_TOKEN}").unwrap(), "Bearer tok-123");
        assert_eq!(subst("${NOPE:-fallback}").unwrap(), "fallback");
        assert_eq!(subst("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(subst("${ORDERS_TOKEN:-x}").unwrap(), "tok-123");
        assert_eq!(subst("${NOPE:-}").unwrap(), "");
        assert_eq!(subst("cost: $5, $HOME, $").unwrap(), "cost: $5, $HOME, $");
        assert_eq!(subst("$${ORDERS_TOKEN}").unwrap(), "${ORDERS_TOKEN}");
        assert!(subst("${ORDERS_TOKEN").unwrap_err().contains("unclosed"));
        assert!(subst("${}").is_err());
        assert!(subst("${A B}").is_err());
    }
}
