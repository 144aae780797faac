//! Table names as SQL identifiers: `orders`, `sales.orders`, `"My Schema"."Orders"`.

/// Postgres truncates identifiers to NAMEDATALEN - 1 bytes.
pub(super) const MAX_IDENT: usize = 63;

/// `schema.table`, `table` (schema public) or `"My Schema"."Orders"` → (schema, table).
pub fn parse_table(s: &str) -> Result<(String, String), String> {
    let mut parts = Vec::new();
    let mut rest = s.trim();
    loop {
        let (ident, after) = parse_ident(rest)?;
        parts.push(ident);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => return Err(format!("`{s}` is not a table name like \"schema.table\"")),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(parts) if parts.len() == 1 => {
            let table = parts.into_iter().next().unwrap_or_default();
            Ok(("public".to_owned(), table))
        }
        Err(_) => Err(format!(
            "`{s}` has too many parts: write \"schema.table\" (the database comes from source.url)"
        )),
    }
}

/// One SQL identifier at the start of `s`, and what follows it.
fn parse_ident(s: &str) -> Result<(String, &str), String> {
    let ident_err = |what: &str| Err(format!("{what} in table name `{s}`"));
    if let Some(quoted) = s.strip_prefix('"') {
        let mut ident = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                ident.push(c);
                continue;
            }
            if quoted[i + 1..].starts_with('"') {
                ident.push('"');
                chars.next();
                continue;
            }
            if ident.is_empty() {
                return ident_err("empty quoted identifier");
            }
            if ident.len() > MAX_IDENT {
                return ident_err("identifier longer than 63 bytes");
            }
            return Ok((ident, &quoted[i + 1..]));
        }
        return ident_err("unclosed quote");
    }
    let end = s.find(['.', '"']).unwrap_or(s.len());
    let ident = &s[..end];
    let mut chars = ident.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if !valid {
        return Err(format!(
            "`{s}` is not a table name like \"schema.table\" (quote unusual names: \"\\\"My Schema\\\".\\\"Orders\\\"\")"
        ));
    }
    if ident.len() > MAX_IDENT {
        return ident_err("identifier longer than 63 bytes");
    }
    if ident.chars().any(char::is_uppercase) {
        let lower = ident.to_lowercase();
        return Err(format!(
            "`{ident}` has upper-case letters, which Postgres folds unless quoted: write `{lower}`, or `\"{ident}\"` for a table created with a quoted name"
        ));
    }
    Ok((ident.to_owned(), &s[end..]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let p = |s: &str| parse_table(s);
        assert_eq!(p("orders").unwrap(), ("public".into(), "orders".into()));
        assert_eq!(
            p("sales.orders").unwrap(),
            ("sales".into(), "orders".into())
        );
        assert_eq!(
            p("\"My Schema\".\"Orders\"").unwrap(),
            ("My Schema".into(), "Orders".into())
        );
        assert_eq!(p("\"a.b\"").unwrap(), ("public".into(), "a.b".into()));
        assert_eq!(
            p("\"say \"\"hi\"\"\".t").unwrap(),
            ("say \"hi\"".into(), "t".into())
        );
        assert_eq!(
            p("app.\"Orders\"").unwrap(),
            ("app".into(), "Orders".into())
        );
        assert!(
            p("Orders")
                .unwrap_err()
                .contains("write `orders`, or `\"Orders\"`")
        );
        assert!(p("db.sales.orders").unwrap_err().contains("too many parts"));
        assert!(p("").is_err());
        assert!(p("sales.").is_err());
        assert!(p("\"unclosed").is_err());
        assert!(p("\"\".t").is_err());
        assert!(p("my table").is_err());
        assert!(p("\"a\"x").is_err());
    }
}
