//! `when` expressions: compiled with CEL at load time, and checked to read only the
//! variables a trigger provides.

use std::collections::HashSet;

/// The variables a `when`, `body` or template expression can use (see [`crate::triggers`]).
pub const WHEN_VARIABLES: &[&str] = &[
    "record",
    "old_record",
    "changed",
    "type",
    "schema",
    "table",
    "id",
    "trigger",
    "key",
    "prefix",
    "content",
    "transactional",
];

/// The variables of a row change's event only.
pub const ROW_VARIABLES: &[&str] = &["record", "old_record", "changed", "schema", "table", "key"];
/// The variables of a message's event only.
pub const MESSAGE_VARIABLES: &[&str] = &["prefix", "content", "transactional"];

/// The first variable of `program` that a trigger of this kind does not have, if any.
pub fn foreign_variable(program: &cel::Program, message_trigger: bool) -> Option<String> {
    let foreign = if message_trigger {
        ROW_VARIABLES
    } else {
        MESSAGE_VARIABLES
    };
    let mut found: Vec<String> = free_variables(program.expression())
        .into_iter()
        .filter(|v| foreign.contains(&v.as_str()))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// CEL's type names, which are identifiers too (`type(x) == string`).
const CEL_TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// A row column an expression reads: `record.status`, `old_record["amount"]`, `key.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowColumn {
    /// `record`, `old_record` or `key`.
    pub variable: &'static str,
    /// The column name.
    pub column: String,
}

/// Compiles a `when` expression into its runtime form.
pub(crate) fn compile_when(s: &str) -> Result<super::When, String> {
    let program = check_cel(s)?;
    let columns = row_columns(program.expression());
    Ok(super::When {
        source: s.to_owned(),
        program: std::sync::Arc::new(program),
        columns,
    })
}

/// The columns of `record` / `old_record` / `key` that `expr` reads by name, in order, once each.
pub(super) fn row_columns(expr: &cel::IdedExpr) -> Vec<RowColumn> {
    use cel::common::ast::{Expr, LiteralValue};
    fn row_var(e: &cel::IdedExpr) -> Option<&'static str> {
        match &e.expr {
            Expr::Ident(name) if name == "record" => Some("record"),
            Expr::Ident(name) if name == "old_record" => Some("old_record"),
            Expr::Ident(name) if name == "key" => Some("key"),
            _ => None,
        }
    }
    fn walk(e: &cel::IdedExpr, out: &mut Vec<RowColumn>) {
        let found = match &e.expr {
            Expr::Select(select) => row_var(&select.operand).map(|v| (v, select.field.clone())),
            // record["x"]
            Expr::Call(call) if call.func_name == "_[_]" && call.args.len() == 2 => {
                match (&call.args[1].expr, row_var(&call.args[0])) {
                    (Expr::Literal(LiteralValue::String(s)), Some(v)) => {
                        Some((v, s.inner().to_owned()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((variable, column)) = found {
            let c = RowColumn { variable, column };
            if !out.contains(&c) {
                out.push(c);
            }
        }
        match &e.expr {
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    walk(target, out);
                }
                call.args.iter().for_each(|a| walk(a, out));
            }
            Expr::Select(select) => walk(&select.operand, out),
            Expr::List(list) => list.elements.iter().for_each(|x| walk(x, out)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        cel::common::ast::EntryExpr::MapEntry(m) => {
                            walk(&m.key, out);
                            walk(&m.value, out);
                        }
                        cel::common::ast::EntryExpr::StructField(f) => walk(&f.value, out),
                    }
                }
            }
            Expr::Comprehension(c) => {
                walk(&c.iter_range, out);
                walk(&c.accu_init, out);
                walk(&c.loop_cond, out);
                walk(&c.loop_step, out);
                walk(&c.result, out);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

/// Compiles a `when` expression, so syntax errors and misspelt variables surface now rather
/// than as a filter that is silently false for every event.
pub(crate) fn check_cel(s: &str) -> Result<cel::Program, String> {
    if s.trim().is_empty() {
        return Err("empty expression".to_owned());
    }
    // A panic in the CEL parser on odd input must not take down config loading.
    let program = match std::panic::catch_unwind(|| cel::Program::compile(s)) {
        Ok(Ok(p)) => p,
        Ok(Err(errors)) => {
            let detail = errors
                .errors
                .first()
                .map(|e| format!("{} at {}:{}", e.msg, e.pos.0, e.pos.1))
                .unwrap_or_else(|| errors.to_string());
            return Err(format!("not a valid CEL expression: {detail}"));
        }
        Err(_) => return Err("not a valid CEL expression".to_owned()),
    };
    let mut unknown: Vec<String> = free_variables(program.expression())
        .into_iter()
        .filter(|v| !WHEN_VARIABLES.contains(&v.as_str()) && !CEL_TYPE_NAMES.contains(&v.as_str()))
        .collect();
    unknown.sort();
    if let Some(first) = unknown.first() {
        return Err(format!(
            "unknown variable `{first}` (the variables are {})",
            WHEN_VARIABLES.join(", ")
        ));
    }
    Ok(program)
}

/// The identifiers `expr` reads that no comprehension (`exists(x, …)`, `map`, …) binds.
fn free_variables(expr: &cel::IdedExpr) -> HashSet<String> {
    fn walk(e: &cel::IdedExpr, bound: &mut Vec<String>, out: &mut HashSet<String>) {
        use cel::common::ast::{EntryExpr, Expr};
        match &e.expr {
            Expr::Ident(name) => {
                if !name.starts_with('@') && !bound.contains(name) {
                    out.insert(name.clone());
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    walk(target, bound, out);
                }
                call.args.iter().for_each(|a| walk(a, bound, out));
            }
            Expr::Select(select) => walk(&select.operand, bound, out),
            Expr::List(list) => list.elements.iter().for_each(|x| walk(x, bound, out)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) => {
                            walk(&m.key, bound, out);
                            walk(&m.value, bound, out);
                        }
                        EntryExpr::StructField(f) => walk(&f.value, bound, out),
                    }
                }
            }
            Expr::Struct(st) => {
                for entry in &st.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        walk(&f.value, bound, out);
                    }
                }
            }
            Expr::Comprehension(c) => {
                walk(&c.iter_range, bound, out);
                walk(&c.accu_init, bound, out);
                let depth = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.iter().cloned());
                bound.push(c.accu_var.clone());
                walk(&c.loop_cond, bound, out);
                walk(&c.loop_step, bound, out);
                walk(&c.result, bound, out);
                bound.truncate(depth);
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    let mut out = HashSet::new();
    walk(expr, &mut Vec::new(), &mut out);
    out
}
