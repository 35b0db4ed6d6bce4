//! The filter expression: which rows of a table are sent. cdc evaluates it on each row itself
//! ([`Filter::matches`]) and `rebuild-index` runs the same condition in Postgres
//! ([`Filter::to_sql`]), so both must mean the same thing.
//!
//! # Syntax
//!
//! A TOML table whose keys are column names; all conditions must hold:
//!
//! ```toml
//! filter = { state = "published", deleted_at = "null", price = { gt = 5, lte = 10 } }
//! ```
//!
//! - `col = "text"`, `col = 5`, `col = 1.5`, `col = true`: equality.
//! - `col = "null"` / `col = "not null"` (any case): `IS NULL` / `IS NOT NULL`. To compare with
//!   the text "null", write `col = { eq = "null" }`.
//! - `col = ["a", "b"]`: `IN`.
//! - `col = { op = value, ... }`, each condition must hold: `eq`, `ne`, `gt`, `gte`, `lt`, `lte`
//!   take one value; `in` and `not_in` a non-empty array; `is_null` true or false.
//!
//! A TOML date-time is taken as the text it is written as.
//!
//! # Meaning
//!
//! As in SQL: a NULL column fails every condition except `is_null` (and `ne`/`not_in` too:
//! `NULL <> 5` is unknown, so not matched). Numbers (integer, numeric and float columns) compare
//! by value, exactly, whatever their digits: `1.50 = 1.5`. Booleans compare `false < true`, and
//! a text literal such as `"yes"` or `"f"` is read as Postgres reads booleans. Text compares by
//! bytes (code points); Postgres uses the column's collation, so `gt`/`lt` on text may disagree
//! with Postgres for non-ASCII or mixed-case text under a non-C collation.
//!
//! Other column types (timestamps, uuids, json, ...) arrive as text, and cdc compares the
//! literal with that text, while Postgres converts the literal to the column's type: equality
//! agrees only when the literal is written exactly as cdc's events show the value (timestamptz as
//! `"2024-05-01T12:00:00Z"`, not `"2024-05-01"`), which Postgres also reads. Give each column a literal of its own type;
//! Postgres rejects e.g. a number compared with a text column, where cdc compares the texts.

use std::cmp::Ordering;

use toml_edit::{Item, Value as TomlValue};

use super::load::{describe, describe_value, quote_key, suggest, Problem};
use crate::event::{quote_ident, Row, Value};

/// A parsed filter: per column, the conditions that must all hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    columns: Vec<(String, Vec<Test>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Compare(Cmp, Literal),
    In(Vec<Literal>),
    NotIn(Vec<Literal>),
    /// true: IS NULL, false: IS NOT NULL.
    IsNull(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    /// The decimal text (no exponent) and its exact value.
    Number(String, Decimal),
    Text(String),
    Bool(bool),
}

const OPERATORS: &[&str] = &["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "is_null"];

impl Filter {
    /// Parses a filter table (inline `{ ... }` or a `[tables.filter]` section). Problems name
    /// keys relative to the filter: `"price.gtt"`, `"state[1]"`.
    pub fn parse(item: &Item) -> Result<Filter, Vec<Problem>> {
        let Some(table) = item.as_table_like() else {
            return Err(vec![Problem::new(
                "",
                format!(
                    "expected a table of conditions like {{ state = \"published\" }}, got {}",
                    describe(item)
                ),
            )]);
        };
        if table.is_empty() {
            return Err(vec![Problem::new(
                "",
                "has no conditions; add one like { state = \"published\" }, or remove the filter",
            )]);
        }
        let mut problems = Vec::new();
        let mut columns = Vec::new();
        for (column, condition) in table.iter() {
            let key = quote_key(column).into_owned();
            let tests = match condition {
                Item::Value(TomlValue::InlineTable(ops)) => operators(ops, &key, &mut problems),
                Item::Table(ops) => operators(ops, &key, &mut problems),
                Item::Value(TomlValue::String(s)) if s.value().eq_ignore_ascii_case("null") => vec![Test::IsNull(true)],
                Item::Value(TomlValue::String(s)) if s.value().eq_ignore_ascii_case("not null") => {
                    vec![Test::IsNull(false)]
                }
                Item::Value(TomlValue::Array(values)) => {
                    list(values, &key, &mut problems).map(Test::In).into_iter().collect()
                }
                Item::Value(value) => literal(value, &key, &mut problems)
                    .map(|l| Test::Compare(Cmp::Eq, l))
                    .into_iter()
                    .collect(),
                other => {
                    problems.push(Problem::new(
                        key,
                        format!(
                            "expected a value, an array or a table of operators, got {}",
                            describe(other)
                        ),
                    ));
                    Vec::new()
                }
            };
            columns.push((column.to_string(), tests));
        }
        if problems.is_empty() {
            Ok(Filter { columns })
        } else {
            Err(problems)
        }
    }

    /// Whether `row` passes: Some(true/false), or None when it cannot be decided because a
    /// column the filter needs is absent, unchanged TOAST (its value was not sent), or an array
    /// (which cdc does not compare). A failed condition decides Some(false) on its own, as in
    /// SQL's `false AND unknown`.
    pub fn matches(&self, row: &Row) -> Option<bool> {
        let mut decided = true;
        for (column, tests) in &self.columns {
            let value = match row.get(column) {
                None | Some(Value::UnchangedToast) => {
                    decided = false;
                    continue;
                }
                Some(value) => value,
            };
            for test in tests {
                match test.eval(value) {
                    Some(false) => return Some(false),
                    Some(true) => {}
                    None => decided = false,
                }
            }
        }
        decided.then_some(true)
    }

    /// The condition for a WHERE clause: conditions joined by AND, so it can be ANDed with more
    /// without parentheses.
    pub fn to_sql(&self) -> String {
        let mut parts = Vec::new();
        for (column, tests) in &self.columns {
            let column = quote_ident(column);
            for test in tests {
                parts.push(test.to_sql(&column));
            }
        }
        parts.join(" AND ")
    }

    /// The columns the filter reads, in the order written.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(column, _)| column.as_str())
    }
}

fn operators(ops: &dyn toml_edit::TableLike, column: &str, problems: &mut Vec<Problem>) -> Vec<Test> {
    if ops.is_empty() {
        problems.push(Problem::new(
            column,
            format!("has no operators; use some of: {}", OPERATORS.join(", ")),
        ));
    }
    let mut tests = Vec::new();
    for (op, item) in ops.iter() {
        let key = format!("{column}.{}", quote_key(op));
        let Some(value) = item.as_value() else {
            problems.push(Problem::new(key, format!("expected a value, got {}", describe(item))));
            continue;
        };
        let cmp = match op {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "gt" => Cmp::Gt,
            "gte" => Cmp::Gte,
            "lt" => Cmp::Lt,
            "lte" => Cmp::Lte,
            "in" | "not_in" => {
                let Some(values) = value.as_array() else {
                    problems.push(Problem::new(
                        key,
                        format!("expected an array of values, got {}", describe_value(value)),
                    ));
                    continue;
                };
                let in_or_not = if op == "in" { Test::In } else { Test::NotIn };
                tests.extend(list(values, &key, problems).map(in_or_not));
                continue;
            }
            "is_null" => {
                match value.as_bool() {
                    Some(is_null) => tests.push(Test::IsNull(is_null)),
                    None => problems.push(Problem::new(
                        key,
                        format!("expected true or false, got {}", describe_value(value)),
                    )),
                }
                continue;
            }
            _ => {
                let hint = match suggest(op, OPERATORS) {
                    Some(close) => format!("did you mean {close:?}?"),
                    None => format!("use one of: {}", OPERATORS.join(", ")),
                };
                problems.push(Problem::new(key, format!("unknown operator; {hint}")));
                continue;
            }
        };
        tests.extend(literal(value, &key, problems).map(|l| Test::Compare(cmp, l)));
    }
    tests
}

fn list(values: &toml_edit::Array, key: &str, problems: &mut Vec<Problem>) -> Option<Vec<Literal>> {
    if values.is_empty() {
        problems.push(Problem::new(
            key,
            "an empty list matches no row; list at least one value",
        ));
        return None;
    }
    let before = problems.len();
    let literals: Vec<Literal> = values
        .iter()
        .enumerate()
        .filter_map(|(i, value)| literal(value, &format!("{key}[{i}]"), problems))
        .collect();
    (problems.len() == before).then_some(literals)
}

fn literal(value: &TomlValue, key: &str, problems: &mut Vec<Problem>) -> Option<Literal> {
    let literal = match value {
        TomlValue::String(s) if s.value().contains('\0') => {
            problems.push(Problem::new(
                key,
                "contains a NUL character, which Postgres text cannot hold",
            ));
            return None;
        }
        TomlValue::String(s) => Literal::Text(s.value().clone()),
        TomlValue::Integer(i) => Literal::number(i.value().to_string()),
        TomlValue::Float(f) if !f.value().is_finite() => {
            problems.push(Problem::new(
                key,
                "expected a finite number; nan and inf are not supported",
            ));
            return None;
        }
        // Display writes every finite f64 as plain decimal digits, never with an exponent.
        TomlValue::Float(f) => Literal::number(f.value().to_string()),
        TomlValue::Boolean(b) => Literal::Bool(*b.value()),
        TomlValue::Datetime(d) => Literal::Text(d.value().to_string()),
        TomlValue::Array(_) | TomlValue::InlineTable(_) => {
            problems.push(Problem::new(
                key,
                format!("expected a string, number or boolean, got {}", describe_value(value)),
            ));
            return None;
        }
    };
    Some(literal)
}

impl Literal {
    fn number(text: String) -> Literal {
        let value = Decimal::parse(&text).expect("an integer or a finite float prints as a decimal");
        Literal::Number(text, value)
    }

    fn text(&self) -> &str {
        match self {
            Literal::Number(text, _) | Literal::Text(text) => text,
            Literal::Bool(b) => bool_text(*b),
        }
    }

    fn to_sql(&self) -> String {
        match self {
            Literal::Number(text, _) => text.clone(),
            Literal::Bool(true) => "TRUE".to_string(),
            Literal::Bool(false) => "FALSE".to_string(),
            // An E'' literal means the same whatever standard_conforming_strings is set to.
            Literal::Text(text) if text.contains('\\') => {
                format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
            }
            Literal::Text(text) => format!("'{}'", text.replace('\'', "''")),
        }
    }
}

fn bool_text(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl Test {
    /// None when `value` is an array, which cdc does not compare.
    fn eval(&self, value: &Value) -> Option<bool> {
        let is_null = matches!(value, Value::Null);
        match self {
            Test::IsNull(wanted) => Some(is_null == *wanted),
            _ if is_null => Some(false),
            Test::Compare(cmp, literal) => compare(value, literal).map(|order| cmp.holds(order)),
            Test::In(literals) => any_equal(value, literals),
            Test::NotIn(literals) => any_equal(value, literals).map(|found| !found),
        }
    }

    fn to_sql(&self, column: &str) -> String {
        match self {
            Test::Compare(cmp, literal) => format!("{column} {} {}", cmp.sql(), literal.to_sql()),
            Test::In(literals) => format!("{column} IN ({})", sql_list(literals)),
            Test::NotIn(literals) => format!("{column} NOT IN ({})", sql_list(literals)),
            Test::IsNull(true) => format!("{column} IS NULL"),
            Test::IsNull(false) => format!("{column} IS NOT NULL"),
        }
    }
}

fn any_equal(value: &Value, literals: &[Literal]) -> Option<bool> {
    let mut found = false;
    for literal in literals {
        found |= compare(value, literal)? == Ordering::Equal;
    }
    Some(found)
}

fn sql_list(literals: &[Literal]) -> String {
    literals.iter().map(Literal::to_sql).collect::<Vec<_>>().join(", ")
}

impl Cmp {
    fn holds(self, order: Ordering) -> bool {
        match self {
            Cmp::Eq => order.is_eq(),
            Cmp::Ne => order.is_ne(),
            Cmp::Gt => order.is_gt(),
            Cmp::Gte => order.is_ge(),
            Cmp::Lt => order.is_lt(),
            Cmp::Lte => order.is_le(),
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "<>",
            Cmp::Gt => ">",
            Cmp::Gte => ">=",
            Cmp::Lt => "<",
            Cmp::Lte => "<=",
        }
    }
}

/// How a non-NULL `value` orders against `literal`, as Postgres would order the column against
/// it (see the module docs for where that is approximate). None for arrays.
fn compare(value: &Value, literal: &Literal) -> Option<Ordering> {
    let numeric = match value {
        Value::Int(i) => Decimal::parse(&i.to_string()),
        Value::Number(n) => Decimal::parse(n),
        _ => None,
    };
    if let Some(number) = numeric {
        let literal_number = match literal {
            Literal::Number(_, d) => Some(d.clone()),
            // Postgres reads a quoted literal as the column's type: '5' compares as 5.
            Literal::Text(text) => Decimal::parse(text),
            Literal::Bool(_) => None,
        };
        if let Some(literal_number) = literal_number {
            return Some(number.cmp(&literal_number));
        }
    }
    if let Value::Bool(b) = value {
        let literal_bool = match literal {
            Literal::Bool(l) => Some(*l),
            Literal::Text(text) => parse_pg_bool(text),
            Literal::Number(..) => None,
        };
        if let Some(l) = literal_bool {
            return Some(b.cmp(&l));
        }
    }
    Some(value.as_text()?.as_ref().cmp(literal.text()))
}

/// Postgres' boolean input: a prefix of true/false/yes/no, on/off, 1/0, any case, trimmed.
fn parse_pg_bool(text: &str) -> Option<bool> {
    let text = text.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, shortest: usize| text.len() >= shortest && word.starts_with(text.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || text == "on" || text == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || text == "0" {
        Some(false)
    } else {
        None
    }
}

/// An exact decimal: `0.d1d2d3... × 10^exponent`, digits without leading or trailing zeros
/// (none at all for zero), so comparing needs no arithmetic and loses no digit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// Reads `-12.50`, `3`, `1e-7`, `+.5`; None for anything else.
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, unsigned) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(e) => (&unsigned[..e], unsigned[e + 1..].parse::<i64>().ok()?),
            None => (unsigned, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all = format!("{int}{frac}");
        let leading_zeros = all.bytes().take_while(|b| *b == b'0').count();
        let digits = all[leading_zeros..].trim_end_matches('0');
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits: String::new(),
                exponent: 0,
            });
        }
        let point = i64::try_from(int.len()).ok()? - i64::try_from(leading_zeros).ok()?;
        Some(Decimal {
            negative,
            digits: digits.to_string(),
            exponent: point.checked_add(exponent)?,
        })
    }

    fn sign(&self) -> i8 {
        match (self.digits.is_empty(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let sign = self.sign();
        sign.cmp(&other.sign()).then_with(|| {
            // With no leading zeros, a larger exponent is a larger magnitude; with equal ones the
            // digit strings compare as the fractions they are.
            let magnitude = self
                .exponent
                .cmp(&other.exponent)
                .then_with(|| self.digits.cmp(&other.digits));
            if sign < 0 {
                magnitude.reverse()
            } else {
                magnitude
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn filter(toml: &str) -> Filter {
        Filter::parse(&item(toml)).unwrap_or_else(|p| panic!("{toml} should parse: {p:?}"))
    }

    fn item(toml: &str) -> Item {
        let doc = toml_edit::Document::parse(format!("filter = {toml}")).unwrap();
        doc.as_table().get("filter").unwrap().clone()
    }

    fn problems(toml: &str) -> Vec<String> {
        let problems = Filter::parse(&item(toml)).expect_err("the filter should be rejected");
        problems
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    fn row(pairs: &[(&str, Value)]) -> Row {
        Row(pairs.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect())
    }

    fn int(i: i64) -> Value {
        Value::Int(i)
    }

    fn num(n: &str) -> Value {
        Value::Number(n.into())
    }

    fn text(s: &str) -> Value {
        Value::String(s.into())
    }

    /// Whether a row with just column `c` = `value` matches.
    fn on(f: &Filter, value: Value) -> Option<bool> {
        f.matches(&row(&[("c", value)]))
    }

    #[test]
    fn shorthand_equality_for_text_numbers_and_booleans() {
        let f = filter(r#"{ c = "published" }"#);
        assert_eq!(f.to_sql(), r#""c" = 'published'"#);
        assert_eq!(on(&f, text("published")), Some(true));
        assert_eq!(on(&f, text("draft")), Some(false));

        let f = filter("{ c = 5 }");
        assert_eq!(f.to_sql(), r#""c" = 5"#);
        assert_eq!(on(&f, int(5)), Some(true));
        assert_eq!(on(&f, num("5.000")), Some(true));
        assert_eq!(on(&f, int(6)), Some(false));

        let f = filter("{ c = true }");
        assert_eq!(f.to_sql(), r#""c" = TRUE"#);
        assert_eq!(on(&f, Value::Bool(true)), Some(true));
        assert_eq!(on(&f, Value::Bool(false)), Some(false));
        assert_eq!(filter("{ c = false }").to_sql(), r#""c" = FALSE"#);
    }

    #[test]
    fn null_and_not_null_shorthands() {
        let f = filter(r#"{ c = "null" }"#);
        assert_eq!(f.to_sql(), r#""c" IS NULL"#);
        assert_eq!(on(&f, Value::Null), Some(true));
        assert_eq!(on(&f, int(1)), Some(false));

        let f = filter(r#"{ c = "NOT NULL" }"#);
        assert_eq!(f.to_sql(), r#""c" IS NOT NULL"#);
        assert_eq!(on(&f, Value::Null), Some(false));
        assert_eq!(on(&f, text("")), Some(true));
    }

    #[test]
    fn the_text_null_needs_the_eq_operator() {
        let f = filter(r#"{ c = { eq = "null" } }"#);
        assert_eq!(f.to_sql(), r#""c" = 'null'"#);
        assert_eq!(on(&f, text("null")), Some(true));
        assert_eq!(on(&f, Value::Null), Some(false));
    }

    #[test]
    fn an_array_means_in() {
        let f = filter(r#"{ c = ["a", "b"] }"#);
        assert_eq!(f.to_sql(), r#""c" IN ('a', 'b')"#);
        assert_eq!(on(&f, text("b")), Some(true));
        assert_eq!(on(&f, text("c")), Some(false));
        assert_eq!(on(&f, Value::Null), Some(false));
    }

    #[test]
    fn each_comparison_operator() {
        let cases = [
            ("eq", "=", [false, true, false]),
            ("ne", "<>", [true, false, true]),
            ("gt", ">", [false, false, true]),
            ("gte", ">=", [false, true, true]),
            ("lt", "<", [true, false, false]),
            ("lte", "<=", [true, true, false]),
        ];
        for (op, sql, [below, equal, above]) in cases {
            let f = filter(&format!("{{ c = {{ {op} = 10 }} }}"));
            assert_eq!(f.to_sql(), format!("\"c\" {sql} 10"), "{op}");
            assert_eq!(on(&f, int(9)), Some(below), "{op} 9");
            assert_eq!(on(&f, num("10.0")), Some(equal), "{op} 10.0");
            assert_eq!(on(&f, num("10.5")), Some(above), "{op} 10.5");
            assert_eq!(on(&f, Value::Null), Some(false), "{op} NULL");
        }
    }

    #[test]
    fn in_and_not_in_operators() {
        let f = filter("{ c = { in = [1, 2.5] } }");
        assert_eq!(f.to_sql(), r#""c" IN (1, 2.5)"#);
        assert_eq!(on(&f, num("2.50")), Some(true));
        assert_eq!(on(&f, int(3)), Some(false));

        let f = filter(r#"{ c = { not_in = ["x", "it's"] } }"#);
        assert_eq!(f.to_sql(), r#""c" NOT IN ('x', 'it''s')"#);
        assert_eq!(on(&f, text("y")), Some(true));
        assert_eq!(on(&f, text("it's")), Some(false));
        // NULL NOT IN (...) is unknown in SQL, so not matched.
        assert_eq!(on(&f, Value::Null), Some(false));
    }

    #[test]
    fn is_null_operator() {
        let f = filter("{ c = { is_null = true } }");
        assert_eq!(f.to_sql(), r#""c" IS NULL"#);
        assert_eq!(on(&f, Value::Null), Some(true));
        assert_eq!(on(&f, int(0)), Some(false));
        let f = filter("{ c = { is_null = false } }");
        assert_eq!(f.to_sql(), r#""c" IS NOT NULL"#);
        assert_eq!(on(&f, Value::Null), Some(false));
        assert_eq!(on(&f, int(0)), Some(true));
    }

    #[test]
    fn operators_on_one_column_all_apply() {
        let f = filter("{ c = { gt = 5, lte = 10 } }");
        assert_eq!(f.to_sql(), r#""c" > 5 AND "c" <= 10"#);
        assert_eq!(on(&f, int(5)), Some(false));
        assert_eq!(on(&f, int(7)), Some(true));
        assert_eq!(on(&f, int(10)), Some(true));
        assert_eq!(on(&f, int(11)), Some(false));
    }

    #[test]
    fn conditions_on_several_columns_are_anded() {
        let f = filter(r#"{ state = "published", deleted_at = "null" }"#);
        assert_eq!(f.to_sql(), r#""state" = 'published' AND "deleted_at" IS NULL"#);
        assert_eq!(f.columns().collect::<Vec<_>>(), ["state", "deleted_at"]);
        assert_eq!(
            f.matches(&row(&[("state", text("published")), ("deleted_at", Value::Null)])),
            Some(true)
        );
        assert_eq!(
            f.matches(&row(&[
                ("state", text("published")),
                ("deleted_at", text("2024-01-01"))
            ])),
            Some(false)
        );
    }

    #[test]
    fn a_missing_or_unsent_column_leaves_the_answer_open_unless_another_fails() {
        let f = filter(r#"{ state = "published", body = "not null" }"#);
        let published = ("state", text("published"));
        assert_eq!(f.matches(&row(std::slice::from_ref(&published))), None);
        assert_eq!(
            f.matches(&row(&[published.clone(), ("body", Value::UnchangedToast)])),
            None
        );
        assert_eq!(
            f.matches(&row(&[("state", text("draft")), ("body", Value::UnchangedToast)])),
            Some(false)
        );
        assert_eq!(f.matches(&row(&[published, ("body", text("x"))])), Some(true));
    }

    #[test]
    fn arrays_are_not_compared() {
        let f = filter(r#"{ c = "{a,b}" }"#);
        assert_eq!(on(&f, Value::Array(vec![text("a"), text("b")])), None);
        assert_eq!(on(&filter(r#"{ c = "not null" }"#), Value::Array(vec![])), Some(true));
    }

    #[test]
    fn numbers_compare_by_exact_value() {
        let f = filter("{ c = { gt = 0.1 } }");
        assert_eq!(on(&f, num("0.10000000000000000001")), Some(true));
        assert_eq!(on(&f, num("0.1")), Some(false));
        assert_eq!(on(&f, num("1e-1")), Some(false));
        assert_eq!(on(&f, num("-5")), Some(false));
        let big = filter("{ c = 9007199254740993 }");
        assert_eq!(on(&big, int(9_007_199_254_740_993)), Some(true));
        assert_eq!(on(&big, int(9_007_199_254_740_992)), Some(false));
        let negative = filter("{ c = { lt = -2 } }");
        assert_eq!(negative.to_sql(), r#""c" < -2"#);
        assert_eq!(on(&negative, num("-10")), Some(true));
        assert_eq!(on(&negative, num("-1.5")), Some(false));
        assert_eq!(on(&negative, int(0)), Some(false));
    }

    #[test]
    fn float_literals_are_written_as_plain_decimals() {
        assert_eq!(filter("{ c = 1e-7 }").to_sql(), r#""c" = 0.0000001"#);
        assert_eq!(filter("{ c = 2.0 }").to_sql(), r#""c" = 2"#);
        assert_eq!(on(&filter("{ c = 1e-7 }"), num("1E-7")), Some(true));
    }

    #[test]
    fn decimals_order_like_numbers() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        let ascending = [
            "-100", "-99.5", "-1", "-0.001", "0", "0.0009", "0.1", "0.12", "0.2", "1", "9", "10", "100.5", "1e3",
        ];
        for pair in ascending.windows(2) {
            assert!(d(pair[0]) < d(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(d("-0"), d("0.000"));
        assert_eq!(d("1.50"), d("+1.5"));
        assert_eq!(d("150e-2"), d("1.5"));
        assert_eq!(d(".5"), d("0.5"));
        for not_a_number in ["", "-", ".", "1.2.3", "abc", "1e", "0x10", "NaN", " 1"] {
            assert_eq!(Decimal::parse(not_a_number), None, "{not_a_number:?}");
        }
    }

    #[test]
    fn a_quoted_number_compares_as_a_number_with_a_numeric_column() {
        let f = filter(r#"{ c = { gte = "10" } }"#);
        assert_eq!(f.to_sql(), r#""c" >= '10'"#);
        assert_eq!(on(&f, int(9)), Some(false));
        assert_eq!(on(&f, int(10)), Some(true));
        // a text column compares as text, as Postgres would
        assert_eq!(on(&f, text("9")), Some(true));
    }

    #[test]
    fn text_compares_by_bytes() {
        let f = filter(r#"{ c = { gt = "b" } }"#);
        assert_eq!(on(&f, text("ba")), Some(true));
        assert_eq!(on(&f, text("a")), Some(false));
        assert_eq!(on(&f, text("B")), Some(false));
        assert_eq!(on(&f, text("é")), Some(true));
    }

    #[test]
    fn booleans_order_false_before_true_and_read_postgres_spellings() {
        assert_eq!(on(&filter("{ c = { gt = false } }"), Value::Bool(true)), Some(true));
        assert_eq!(on(&filter("{ c = { lt = false } }"), Value::Bool(false)), Some(false));
        for spelling in ["t", "TRUE", "yes", "y", "on", "1", " tr "] {
            assert_eq!(
                on(&filter(&format!("{{ c = {spelling:?} }}")), Value::Bool(true)),
                Some(true),
                "{spelling}"
            );
        }
        for spelling in ["f", "no", "off", "0", "FALSE"] {
            assert_eq!(
                on(&filter(&format!("{{ c = {spelling:?} }}")), Value::Bool(false)),
                Some(true),
                "{spelling}"
            );
        }
        assert_eq!(parse_pg_bool("o"), None);
        assert_eq!(parse_pg_bool("maybe"), None);
    }

    #[test]
    fn other_types_compare_as_their_text() {
        let f = filter("{ c = { gte = 2024-05-01 } }");
        assert_eq!(f.to_sql(), r#""c" >= '2024-05-01'"#);
        assert_eq!(on(&f, text("2024-05-01 12:00:00+00")), Some(true));
        assert_eq!(on(&f, text("2024-04-30 23:59:59+00")), Some(false));
        let json = Value::Json(serde_json::value::RawValue::from_string("{\"a\":1}".into()).unwrap());
        assert_eq!(on(&filter(r#"{ c = '{"a":1}' }"#), json), Some(true));
    }

    #[test]
    fn sql_quotes_identifiers_and_escapes_literals() {
        let f = filter(r#"{ "Odd \"col\"" = "it's", path = 'C:\dir' }"#);
        assert_eq!(f.to_sql(), r#""Odd ""col""" = 'it''s' AND "path" = E'C:\\dir'"#);
        assert_eq!(f.columns().collect::<Vec<_>>(), ["Odd \"col\"", "path"]);
    }

    #[test]
    fn a_filter_section_works_like_an_inline_table() {
        let doc = toml_edit::Document::parse("[filter]\nstate = \"live\"\n[filter.price]\ngt = 5\n").unwrap();
        let f = Filter::parse(doc.as_table().get("filter").unwrap()).unwrap();
        assert_eq!(f.to_sql(), r#""state" = 'live' AND "price" > 5"#);
    }

    #[test]
    fn parse_errors_name_the_key_and_say_what_to_write() {
        assert_eq!(
            problems("5"),
            [": expected a table of conditions like { state = \"published\" }, got an integer"]
        );
        assert_eq!(
            problems("{}"),
            [": has no conditions; add one like { state = \"published\" }, or remove the filter"]
        );
        assert_eq!(
            problems("{ c = { gtt = 5 } }"),
            ["c.gtt: unknown operator; did you mean \"gt\"?"]
        );
        assert_eq!(
            problems("{ c = { between = 5 } }"),
            ["c.between: unknown operator; use one of: eq, ne, gt, gte, lt, lte, in, not_in, is_null"]
        );
        assert_eq!(
            problems("{ c = {} }"),
            ["c: has no operators; use some of: eq, ne, gt, gte, lt, lte, in, not_in, is_null"]
        );
        assert_eq!(
            problems("{ c = { in = 5 } }"),
            ["c.in: expected an array of values, got an integer"]
        );
        assert_eq!(
            problems("{ c = { not_in = [] } }"),
            ["c.not_in: an empty list matches no row; list at least one value"]
        );
        assert_eq!(
            problems("{ c = [] }"),
            ["c: an empty list matches no row; list at least one value"]
        );
        assert_eq!(
            problems("{ c = { is_null = \"yes\" } }"),
            ["c.is_null: expected true or false, got a string"]
        );
        assert_eq!(
            problems("{ c = { eq = [1] } }"),
            ["c.eq: expected a string, number or boolean, got an array"]
        );
        assert_eq!(
            problems("{ c = [1, [2]] }"),
            ["c[1]: expected a string, number or boolean, got an array"]
        );
        assert_eq!(
            problems("{ c = nan }"),
            ["c: expected a finite number; nan and inf are not supported"]
        );
        assert_eq!(
            problems("{ c = \"a\\u0000b\" }"),
            ["c: contains a NUL character, which Postgres text cannot hold"]
        );
    }

    #[test]
    fn every_problem_in_a_filter_is_reported() {
        assert_eq!(
            problems(r#"{ a = { gtt = 1 }, "b c" = { in = [] }, d = { is_null = 1, lt = {} } }"#),
            [
                "a.gtt: unknown operator; did you mean \"gt\"?",
                "\"b c\".in: an empty list matches no row; list at least one value",
                "d.is_null: expected true or false, got an integer",
                "d.lt: expected a string, number or boolean, got a table",
            ]
        );
    }
}
