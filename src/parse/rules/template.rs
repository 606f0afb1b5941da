//! Template syntax of rule fields: literal text with `${field}`,
//! `${field:-default}`, `${field|table}` and `${field|table:-default}`;
//! `$$` is a literal `$`.

/// One piece of a template as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Field {
        name: String,
        table: Option<String>,
        /// Used when the field has no value, or (with a table) when the table
        /// has no entry for it.
        default: Option<String>,
    },
}

/// Cuts `text` into pieces, or says what is wrong with it.
pub fn pieces(text: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(more) = after.strip_prefix('$') {
            lit.push('$');
            rest = more;
        } else if let Some(body_on) = after.strip_prefix('{') {
            let end = body_on
                .find('}')
                .ok_or_else(|| format!("`${{` at byte {i} is not closed by `}}`"))?;
            let body = &body_on[..end];
            let (head, default) = match body.find(":-") {
                Some(j) => (&body[..j], Some(body[j + 2..].to_string())),
                None => (body, None),
            };
            let (name, table) = match head.find('|') {
                Some(j) => (&head[..j], Some(head[j + 1..].trim().to_string())),
                None => (head, None),
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("`${{{body}}}` names no field"));
            }
            if table.as_deref() == Some("") {
                return Err(format!("`${{{body}}}`: empty table name after `|`"));
            }
            if !lit.is_empty() {
                out.push(Piece::Literal(std::mem::take(&mut lit)));
            }
            out.push(Piece::Field {
                name: name.to_string(),
                table,
                default,
            });
            rest = &body_on[end + 1..];
        } else {
            lit.push('$');
            rest = after;
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Piece::Literal(lit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, table: Option<&str>, default: Option<&str>) -> Piece {
        Piece::Field {
            name: name.into(),
            table: table.map(Into::into),
            default: default.map(Into::into),
        }
    }

    #[test]
    fn literal_fields_tables_and_defaults() {
        assert_eq!(pieces("").unwrap(), vec![]);
        assert_eq!(
            pieces("plain $5 and $$x").unwrap(),
            vec![Piece::Literal("plain $5 and $x".into())]
        );
        assert_eq!(
            pieces("${phase|phase}").unwrap(),
            vec![field("phase", Some("phase"), None)]
        );
        assert_eq!(
            pieces("s-${a.b:-none}/${c|t:-x:y}!").unwrap(),
            vec![
                Piece::Literal("s-".into()),
                field("a.b", None, Some("none")),
                Piece::Literal("/".into()),
                field("c", Some("t"), Some("x:y")),
                Piece::Literal("!".into()),
            ]
        );
        assert_eq!(pieces("${x:-}").unwrap(), vec![field("x", None, Some(""))]);
    }

    #[test]
    fn syntax_errors_say_what() {
        assert!(pieces("a ${tool").unwrap_err().contains("not closed"));
        assert!(pieces("${}").unwrap_err().contains("names no field"));
        assert!(pieces("${:-d}").unwrap_err().contains("names no field"));
        assert!(pieces("${x|}").unwrap_err().contains("empty table"));
    }
}
