//! Postgres text values → event values, by the column type's kind.
//!
//! pgoutput sends each value in its type's text output form. The replication session pins
//! DateStyle=ISO, IntervalStyle=iso_8601, extra_float_digits=3, bytea_output=hex and
//! TimeZone=UTC, so the formats parsed here are the only ones that arrive.
//!
//! Conversion never fails: text that does not have the expected form (or a type cdc does not
//! know) becomes a string of the text as Postgres printed it, so no value is ever lost. Numbers
//! keep the database's digits (`Value::Number`), never going through a float. This is the hot
//! path, so parsing is by hand (no regex) and a scalar allocates only its output (bytea also its
//! decoded bytes).

use base64::Engine as _;
use chrono::{Datelike, NaiveDate, TimeDelta, Timelike};
use serde_json::value::RawValue;

use crate::event::Value;

/// How a column's text is converted. Built-in types map through `builtin_kind`; the relation
/// cache resolves other types (domains to their base type, enums to `Text`, arrays of either)
/// from the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// int2, int4, int8, oid.
    Int,
    Numeric,
    /// float4, float8.
    Float,
    /// Kept as a string: text types, uuid, network addresses, money, xml, enums.
    Text,
    /// json, jsonb: embedded as JSON.
    Json,
    Bytea,
    Date,
    Timestamp,
    Timestamptz,
    Time,
    Timetz,
    Interval,
    /// An array (any number of dimensions) of `element`, whose text form separates elements
    /// with `delimiter` (`,` for every type but box).
    Array {
        element: Box<Kind>,
        delimiter: u8,
    },
    /// Anything else (composites, ranges, geometric and extension types): kept as its text.
    Other,
}

/// The kind of a built-in type (or an array of one), by OID; None for other types.
pub fn builtin_kind(type_oid: u32) -> Option<Kind> {
    if let Some(kind) = builtin_scalar(type_oid) {
        return Some(kind);
    }
    // Array type OID → element type OID, from pg_type.dat.
    let element = match type_oid {
        1000 => 16,   // _bool
        1001 => 17,   // _bytea
        1002 => 18,   // _char
        1003 => 19,   // _name
        1016 => 20,   // _int8
        1005 => 21,   // _int2
        1007 => 23,   // _int4
        1009 => 25,   // _text
        1028 => 26,   // _oid
        199 => 114,   // _json
        143 => 142,   // _xml
        651 => 650,   // _cidr
        1021 => 700,  // _float4
        1022 => 701,  // _float8
        791 => 790,   // _money
        1040 => 829,  // _macaddr
        1041 => 869,  // _inet
        1014 => 1042, // _bpchar
        1015 => 1043, // _varchar
        1182 => 1082, // _date
        1183 => 1083, // _time
        1115 => 1114, // _timestamp
        1185 => 1184, // _timestamptz
        1187 => 1186, // _interval
        1270 => 1266, // _timetz
        1231 => 1700, // _numeric
        2951 => 2950, // _uuid
        3807 => 3802, // _jsonb
        _ => return None,
    };
    Some(Kind::Array {
        element: Box::new(builtin_scalar(element)?),
        delimiter: b',',
    })
}

fn builtin_scalar(type_oid: u32) -> Option<Kind> {
    Some(match type_oid {
        16 => Kind::Bool,
        20 | 21 | 23 | 26 => Kind::Int,
        1700 => Kind::Numeric,
        700 | 701 => Kind::Float,
        // money's text carries a currency symbol and grouping: not a number.
        18 | 19 | 25 | 142 | 650 | 790 | 829 | 869 | 1042 | 1043 | 2950 => Kind::Text,
        114 | 3802 => Kind::Json,
        17 => Kind::Bytea,
        1082 => Kind::Date,
        1114 => Kind::Timestamp,
        1184 => Kind::Timestamptz,
        1083 => Kind::Time,
        1266 => Kind::Timetz,
        1186 => Kind::Interval,
        _ => return None,
    })
}

/// Converts one value's text. Never fails: unexpected text becomes `Value::String` of itself.
pub fn convert(kind: &Kind, text: &[u8]) -> Value {
    let converted = match kind {
        Kind::Bool => match text {
            b"t" => Some(Value::Bool(true)),
            b"f" => Some(Value::Bool(false)),
            _ => None,
        },
        Kind::Int => std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Value::Int),
        // NaN and the infinities are not JSON numbers, so they stay strings.
        Kind::Numeric | Kind::Float => number(text),
        Kind::Json => json(text),
        Kind::Bytea => bytea(text),
        Kind::Timestamp => timestamp(text),
        Kind::Timestamptz => timestamptz(text),
        Kind::Array { element, delimiter } => array(element, *delimiter, text),
        Kind::Text | Kind::Date | Kind::Time | Kind::Timetz | Kind::Interval | Kind::Other => None,
    };
    converted.unwrap_or_else(|| string(text))
}

fn string(text: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(text).into())
}

fn number(text: &[u8]) -> Option<Value> {
    if !is_json_number(text) {
        return None;
    }
    std::str::from_utf8(text).ok().map(|s| Value::Number(s.into()))
}

/// RFC 8259's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(b: &[u8]) -> bool {
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(b.first() == Some(&b'-'));
    i = match b.get(i) {
        Some(b'0') => i + 1,
        Some(b'1'..=b'9') => digits(i + 1),
        _ => return false,
    };
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return false;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return false;
        }
        i = end;
    }
    i == b.len()
}

fn json(text: &[u8]) -> Option<Value> {
    let s = std::str::from_utf8(text).ok()?;
    RawValue::from_string(s.to_owned()).ok().map(Value::Json)
}

/// `\x0a0b…` → standard base64 of the bytes.
fn bytea(text: &[u8]) -> Option<Value> {
    let hex = text.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        bytes.push(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?);
    }
    Some(Value::String(
        base64::engine::general_purpose::STANDARD.encode(bytes).into(),
    ))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `2026-11-24 18:30:00.123456` → `2026-11-24T18:30:00.123456`. BC dates and infinities do
/// not fit the pattern and stay as printed.
fn timestamp(text: &[u8]) -> Option<Value> {
    let dt = DateTime::parse(text)?;
    if dt.end != text.len() {
        return None;
    }
    Some(Value::String(dt.iso(text, "").into()))
}

/// `2026-11-24 18:30:00.123456+00` → `2026-11-24T18:30:00.123456Z`; another offset (the
/// session's TimeZone is UTC, but a historical local-mean-time offset like `+05:53:28` is
/// still possible for other zones) is converted to UTC, keeping the fraction as printed.
fn timestamptz(text: &[u8]) -> Option<Value> {
    let dt = DateTime::parse(text)?;
    let offset = utc_offset_seconds(&text[dt.end..])?;
    if offset == 0 {
        return Some(Value::String(dt.iso(text, "Z").into()));
    }
    let local = NaiveDate::from_ymd_opt(dt.year, dt.month, dt.day)?.and_hms_opt(dt.hour, dt.minute, dt.second)?;
    let utc = local.checked_sub_signed(TimeDelta::seconds(offset))?;
    if utc.year() < 1 {
        // Postgres would print that as a BC date; RFC 3339 has no form for it.
        return None;
    }
    let fraction = std::str::from_utf8(&text[dt.seconds_end..dt.end]).ok()?;
    Some(Value::String(
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}Z",
            utc.year(),
            utc.month(),
            utc.day(),
            utc.hour(),
            utc.minute(),
            utc.second()
        )
        .into(),
    ))
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` (or `-`), and nothing after it.
fn utc_offset_seconds(b: &[u8]) -> Option<i64> {
    let (&sign, b) = b.split_first()?;
    let sign = match sign {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut seconds = i64::from(two_digits(b, 0)?) * 3600;
    let mut i = 2;
    for unit in [60, 1] {
        if i == b.len() {
            break;
        }
        if b[i] != b':' {
            return None;
        }
        seconds += i64::from(two_digits(b, i + 1)?) * unit;
        i += 3;
    }
    (i == b.len()).then_some(sign * seconds)
}

fn two_digits(b: &[u8], at: usize) -> Option<u32> {
    match b.get(at..at + 2)? {
        &[h @ b'0'..=b'9', l @ b'0'..=b'9'] => Some(u32::from(h - b'0') * 10 + u32::from(l - b'0')),
        _ => None,
    }
}

/// The leading `YYYY-MM-DD HH:MM:SS[.f…]` of an ISO-style timestamp (the year may have up to
/// six digits: Postgres goes to 294276 AD).
struct DateTime {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// Index of the space between date and time.
    date_end: usize,
    /// Index just after the seconds, where the fraction (if any) starts.
    seconds_end: usize,
    /// Index just after the fraction.
    end: usize,
}

impl DateTime {
    fn parse(b: &[u8]) -> Option<DateTime> {
        let year_len = b.iter().position(|&c| c == b'-')?;
        if !(4..=6).contains(&year_len) || !b[..year_len].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let year = b[..year_len].iter().fold(0, |y, &d| y * 10 + i32::from(d - b'0'));
        let rest = &b[year_len..];
        // "-MM-DD HH:MM:SS": separators at fixed places after the year.
        let seps = [(0, b'-'), (3, b'-'), (6, b' '), (9, b':'), (12, b':')];
        if rest.len() < 15 || seps.iter().any(|&(i, c)| rest[i] != c) {
            return None;
        }
        let (month, day) = (two_digits(rest, 1)?, two_digits(rest, 4)?);
        let (hour, minute, second) = (two_digits(rest, 7)?, two_digits(rest, 10)?, two_digits(rest, 13)?);
        let seconds_end = year_len + 15;
        let mut end = seconds_end;
        if b.get(end) == Some(&b'.') {
            end += 1;
            while b.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if end == seconds_end + 1 {
                return None;
            }
        }
        Some(DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            date_end: year_len + 6,
            seconds_end,
            end,
        })
    }

    /// The date and time as printed, joined by `T`, followed by `suffix`.
    fn iso(&self, text: &[u8], suffix: &str) -> String {
        // The parsed prefix is ASCII by construction.
        let printed = std::str::from_utf8(&text[..self.end]).unwrap_or_default();
        let mut s = String::with_capacity(self.end + suffix.len());
        s.push_str(&printed[..self.date_end]);
        s.push('T');
        s.push_str(&printed[self.date_end + 1..]);
        s.push_str(suffix);
        s
    }
}

/// Postgres' limit on array dimensions (MAXDIM); deeper nesting is malformed.
const MAX_DIMENSIONS: usize = 6;

/// `{1,2,NULL}`, `{{1,2},{3,4}}`, `[0:1]={1,2}`, `{"a,b","NULL",NULL}` → nested arrays of
/// converted elements. Lower bounds are dropped: a JSON array has none.
fn array(element: &Kind, delimiter: u8, text: &[u8]) -> Option<Value> {
    let body = skip_dimensions(text)?;
    let mut parser = ArrayParser {
        b: body,
        i: 0,
        element,
        delimiter,
    };
    let value = parser.array(1)?;
    (parser.i == body.len()).then_some(value)
}

/// Skips the `[lb:ub]…=` decoration Postgres prints when a lower bound is not 1.
fn skip_dimensions(text: &[u8]) -> Option<&[u8]> {
    if text.first() != Some(&b'[') {
        return Some(text);
    }
    let eq = text.iter().position(|&c| c == b'=')?;
    let mut dims = &text[..eq];
    while !dims.is_empty() {
        let close = dims.iter().position(|&c| c == b']')?;
        let bounds = dims[..close].strip_prefix(b"[")?;
        let colon = bounds.iter().position(|&c| c == b':')?;
        if !is_integer(&bounds[..colon]) || !is_integer(&bounds[colon + 1..]) {
            return None;
        }
        dims = &dims[close + 1..];
    }
    Some(&text[eq + 1..])
}

fn is_integer(b: &[u8]) -> bool {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

struct ArrayParser<'a, 'k> {
    b: &'a [u8],
    i: usize,
    element: &'k Kind,
    delimiter: u8,
}

impl ArrayParser<'_, '_> {
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    /// One `{…}` level: either all sub-arrays or all elements.
    fn array(&mut self, dimension: usize) -> Option<Value> {
        if dimension > MAX_DIMENSIONS || self.next()? != b'{' {
            return None;
        }
        let mut items = Vec::new();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Some(Value::Array(items));
        }
        let nested = self.b.get(self.i) == Some(&b'{');
        loop {
            let item = match *self.b.get(self.i)? {
                b'{' if nested => self.array(dimension + 1)?,
                _ if nested => return None,
                b'"' => self.quoted()?,
                _ => self.unquoted()?,
            };
            items.push(item);
            match self.next()? {
                b'}' => return Some(Value::Array(items)),
                c if c == self.delimiter => {}
                _ => return None,
            }
        }
    }

    /// `"…"` with `\` escaping the next byte; never NULL.
    fn quoted(&mut self) -> Option<Value> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            match *self.b.get(self.i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
        let raw = &self.b[start..self.i];
        self.i += 1;
        if !escaped {
            return Some(convert(self.element, raw));
        }
        let mut unescaped = Vec::with_capacity(raw.len());
        let mut bytes = raw.iter();
        while let Some(&c) = bytes.next() {
            unescaped.push(if c == b'\\' { *bytes.next()? } else { c });
        }
        Some(convert(self.element, &unescaped))
    }

    /// An element Postgres did not need to quote: no quotes, braces, backslashes, spaces or
    /// delimiters in it, never empty. `NULL` is the null element.
    fn unquoted(&mut self) -> Option<Value> {
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            if c == self.delimiter || c == b'}' {
                break;
            }
            if matches!(c, b'"' | b'\\' | b'{') || c.is_ascii_whitespace() {
                return None;
            }
            self.i += 1;
        }
        let raw = &self.b[start..self.i];
        match raw {
            [] => None,
            _ if raw.eq_ignore_ascii_case(b"NULL") => Some(Value::Null),
            _ => Some(convert(self.element, raw)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }
    fn n(text: &str) -> Value {
        Value::Number(text.into())
    }
    fn c(kind: &Kind, text: &str) -> Value {
        convert(kind, text.as_bytes())
    }
    fn arr(element: Kind) -> Kind {
        Kind::Array {
            element: Box::new(element),
            delimiter: b',',
        }
    }
    fn json_text(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn builtin_scalar_oids() {
        let cases = [
            (16, Kind::Bool),
            (21, Kind::Int),
            (23, Kind::Int),
            (20, Kind::Int),
            (26, Kind::Int),
            (1700, Kind::Numeric),
            (700, Kind::Float),
            (701, Kind::Float),
            (790, Kind::Text),
            (25, Kind::Text),
            (1043, Kind::Text),
            (1042, Kind::Text),
            (19, Kind::Text),
            (18, Kind::Text),
            (2950, Kind::Text),
            (869, Kind::Text),
            (650, Kind::Text),
            (829, Kind::Text),
            (142, Kind::Text),
            (114, Kind::Json),
            (3802, Kind::Json),
            (17, Kind::Bytea),
            (1082, Kind::Date),
            (1114, Kind::Timestamp),
            (1184, Kind::Timestamptz),
            (1083, Kind::Time),
            (1266, Kind::Timetz),
            (1186, Kind::Interval),
        ];
        for (oid, kind) in cases {
            assert_eq!(builtin_kind(oid), Some(kind), "oid {oid}");
        }
        // box (603), composites and user types are resolved elsewhere
        for oid in [0, 603, 1020, 16_384] {
            assert_eq!(builtin_kind(oid), None, "oid {oid}");
        }
    }

    #[test]
    fn builtin_array_oids_wrap_their_element() {
        let arrays = [
            (1000, 16),
            (1005, 21),
            (1007, 23),
            (1016, 20),
            (1028, 26),
            (1231, 1700),
            (1021, 700),
            (1022, 701),
            (791, 790),
            (1009, 25),
            (1015, 1043),
            (1014, 1042),
            (1003, 19),
            (1002, 18),
            (2951, 2950),
            (1041, 869),
            (651, 650),
            (1040, 829),
            (143, 142),
            (199, 114),
            (3807, 3802),
            (1001, 17),
            (1182, 1082),
            (1115, 1114),
            (1185, 1184),
            (1183, 1083),
            (1270, 1266),
            (1187, 1186),
        ];
        for (array, element) in arrays {
            assert_eq!(
                builtin_kind(array),
                Some(arr(builtin_kind(element).unwrap())),
                "oid {array}"
            );
        }
    }

    #[test]
    fn bool() {
        assert_eq!(c(&Kind::Bool, "t"), Value::Bool(true));
        assert_eq!(c(&Kind::Bool, "f"), Value::Bool(false));
        assert_eq!(c(&Kind::Bool, "true"), s("true"));
    }

    #[test]
    fn int() {
        assert_eq!(c(&Kind::Int, "42"), Value::Int(42));
        assert_eq!(c(&Kind::Int, "-32768"), Value::Int(-32768));
        assert_eq!(c(&Kind::Int, "9223372036854775807"), Value::Int(i64::MAX));
        assert_eq!(c(&Kind::Int, "-9223372036854775808"), Value::Int(i64::MIN));
        assert_eq!(c(&Kind::Int, "4294967295"), Value::Int(4_294_967_295)); // the largest oid
        assert_eq!(c(&Kind::Int, "9223372036854775808"), s("9223372036854775808"));
        assert_eq!(c(&Kind::Int, "12a"), s("12a"));
        assert_eq!(c(&Kind::Int, ""), s(""));
    }

    #[test]
    fn numeric_keeps_the_database_digits() {
        for digits in [
            "0",
            "-0",
            "1.50",
            "0.000000000000000000000000000001",
            "123456789012345678901234567890.123456789",
            "-98765432109876543210.000000000000000000001",
            "100000000000000000000",
        ] {
            let v = c(&Kind::Numeric, digits);
            assert_eq!(v, n(digits));
            assert_eq!(json_text(&v), digits);
        }
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(c(&Kind::Numeric, special), s(special));
        }
    }

    #[test]
    fn float() {
        for digits in [
            "1e+100",
            "1.5e-07",
            "-0",
            "0.1",
            "3.4028235e+38",
            "1e-320",
            "123456789012",
        ] {
            assert_eq!(c(&Kind::Float, digits), n(digits));
            assert_eq!(json_text(&c(&Kind::Float, digits)), digits);
        }
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(c(&Kind::Float, special), s(special));
        }
    }

    #[test]
    fn number_check_agrees_with_serde_json() {
        let candidates = [
            "0",
            "-0",
            "1",
            "10",
            "01",
            "-01",
            "1.",
            ".5",
            "1.5",
            "1.5e3",
            "1E3",
            "1e+3",
            "1e-3",
            "1e",
            "1e+",
            "-",
            "+1",
            "",
            "1.5.5",
            "0x10",
            "1_000",
            " 1",
            "1 ",
            "--1",
            "1e3.5",
            "NaN",
            "-Infinity",
            "00",
            "0.0e0",
            "9".repeat(400).leak(),
        ];
        // every candidate that is JSON at all is a number, so serde's verdict is the reference
        for text in candidates {
            let serde_ok = serde_json::from_str::<&RawValue>(text).is_ok_and(|raw| raw.get() == text);
            assert_eq!(is_json_number(text.as_bytes()), serde_ok, "{text:?}");
        }
    }

    #[test]
    fn text_types_stay_strings() {
        assert_eq!(c(&Kind::Text, "héllo wörld ✓ 🐘"), s("héllo wörld ✓ 🐘"));
        assert_eq!(c(&Kind::Text, ""), s(""));
        assert_eq!(
            c(&Kind::Text, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(c(&Kind::Text, "192.168.0.1/24"), s("192.168.0.1/24"));
        assert_eq!(c(&Kind::Text, "$1,000.50"), s("$1,000.50"));
        assert_eq!(c(&Kind::Other, "(1,2)"), s("(1,2)"));
        // not valid UTF-8 (a non-UTF8 server encoding): kept, with replacement characters
        assert_eq!(convert(&Kind::Text, b"a\xFFb"), s("a\u{FFFD}b"));
    }

    #[test]
    fn json_is_embedded_verbatim() {
        let text = r#"{"b": [1, 2.50, 123456789012345678901234567890], "a": "ü", "a": null}"#;
        let v = c(&Kind::Json, text);
        assert!(matches!(&v, Value::Json(raw) if raw.get() == text));
        assert_eq!(json_text(&v), text);
        assert!(matches!(c(&Kind::Json, "1e999"), Value::Json(raw) if raw.get() == "1e999"));
        assert!(matches!(c(&Kind::Json, r#""\ud800""#), Value::Json(_)));
        assert_eq!(c(&Kind::Json, "{nope"), s("{nope"));
    }

    #[test]
    fn bytea_becomes_base64() {
        assert_eq!(c(&Kind::Bytea, r"\x0a0bff"), s("Cgv/"));
        assert_eq!(c(&Kind::Bytea, r"\x48656C6C6F"), s("SGVsbG8="));
        assert_eq!(c(&Kind::Bytea, r"\x"), s(""));
        for malformed in [r"\x0", r"\x0g", r"abc", r"\001"] {
            assert_eq!(c(&Kind::Bytea, malformed), s(malformed));
        }
    }

    #[test]
    fn date_time_and_interval_stay_as_printed() {
        for (kind, text) in [
            (Kind::Date, "2026-11-24"),
            (Kind::Date, "infinity"),
            (Kind::Date, "0044-03-15 BC"),
            (Kind::Time, "18:30:00.25"),
            (Kind::Timetz, "18:30:00+05:30"),
            (Kind::Interval, "P1Y2M3DT4H5M6.5S"),
            (Kind::Interval, "PT0S"),
        ] {
            assert_eq!(c(&kind, text), s(text));
        }
    }

    #[test]
    fn timestamp_gets_a_t() {
        assert_eq!(
            c(&Kind::Timestamp, "2026-11-24 18:30:00.123456"),
            s("2026-11-24T18:30:00.123456")
        );
        assert_eq!(c(&Kind::Timestamp, "2026-11-24 18:30:00"), s("2026-11-24T18:30:00"));
        assert_eq!(
            c(&Kind::Timestamp, "10000-01-01 00:00:00.5"),
            s("10000-01-01T00:00:00.5")
        );
        for as_is in [
            "infinity",
            "-infinity",
            "2026-11-24 18:30:00.5 BC",
            "2026-11-24T18:30:00",
            "2026-11-24 18:30:00.",
            "2026-11-24",
        ] {
            assert_eq!(c(&Kind::Timestamp, as_is), s(as_is));
        }
    }

    #[test]
    fn timestamptz_becomes_utc_rfc3339() {
        assert_eq!(
            c(&Kind::Timestamptz, "2026-11-24 18:30:00.123456+00"),
            s("2026-11-24T18:30:00.123456Z")
        );
        assert_eq!(
            c(&Kind::Timestamptz, "2026-11-24 18:30:00+00"),
            s("2026-11-24T18:30:00Z")
        );
        assert_eq!(
            c(&Kind::Timestamptz, "2026-11-25 00:00:00.123456+05:30"),
            s("2026-11-24T18:30:00.123456Z")
        );
        assert_eq!(
            c(&Kind::Timestamptz, "2025-12-31 20:30:00-03:30"),
            s("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            c(&Kind::Timestamptz, "1850-01-01 05:53:28+05:53:28"),
            s("1850-01-01T00:00:00Z")
        );
        assert_eq!(
            c(&Kind::Timestamptz, "2024-03-01 01:00:00.5+02"),
            s("2024-02-29T23:00:00.5Z")
        );
        for as_is in [
            "infinity",
            "-infinity",
            "2026-11-24 18:30:00+00 BC",
            "0001-01-01 00:30:00+01",
            "2026-11-24 18:30:00",
            "2026-11-24 18:30:00+0",
            "2026-11-24 18:30:00+05:3",
            "2026-13-24 18:30:00+01",
        ] {
            assert_eq!(c(&Kind::Timestamptz, as_is), s(as_is));
        }
    }

    #[test]
    fn arrays_of_scalars_with_nulls() {
        let ints = builtin_kind(1007).unwrap();
        assert_eq!(
            c(&ints, "{1,2,NULL}"),
            Value::Array(vec![Value::Int(1), Value::Int(2), Value::Null])
        );
        assert_eq!(c(&ints, "{}"), Value::Array(vec![]));
        let bools = builtin_kind(1000).unwrap();
        assert_eq!(
            c(&bools, "{t,f,NULL}"),
            Value::Array(vec![Value::Bool(true), Value::Bool(false), Value::Null])
        );
        let numerics = builtin_kind(1231).unwrap();
        assert_eq!(
            c(&numerics, "{1.50,NaN,-0}"),
            Value::Array(vec![n("1.50"), s("NaN"), n("-0")])
        );
        assert_eq!(json_text(&c(&numerics, "{1.50,NaN,-0}")), r#"[1.50,"NaN",-0]"#);
    }

    #[test]
    fn multidimensional_arrays_nest() {
        let ints = builtin_kind(1007).unwrap();
        let v = c(&ints, "{{1,2},{3,4}}");
        assert_eq!(json_text(&v), "[[1,2],[3,4]]");
        assert_eq!(
            json_text(&c(&ints, "{{{1},{2}},{{3},{NULL}}}")),
            "[[[1],[2]],[[3],[null]]]"
        );
    }

    #[test]
    fn dimension_decoration_is_skipped() {
        let ints = builtin_kind(1007).unwrap();
        assert_eq!(json_text(&c(&ints, "[0:1]={1,2}")), "[1,2]");
        assert_eq!(json_text(&c(&ints, "[0:1][2:3]={{1,2},{3,4}}")), "[[1,2],[3,4]]");
        assert_eq!(json_text(&c(&ints, "[-2:-1]={5,6}")), "[5,6]");
        for malformed in [
            "[0:1]{1,2}",
            "[0]={1}",
            "[a:1]={1}",
            "[0:1]x={1}",
            "[0:1]=",
            "[1:2]={1,2",
        ] {
            assert_eq!(c(&ints, malformed), s(malformed), "{malformed}");
        }
    }

    #[test]
    fn quoted_elements_unescape_and_only_unquoted_null_is_null() {
        let texts = builtin_kind(1009).unwrap();
        let v = c(
            &texts,
            r#"{"a,b","with \"quote\"","back\\slash",NULL,"NULL",""," sp","ü{}",null,plain}"#,
        );
        assert_eq!(
            v,
            Value::Array(vec![
                s("a,b"),
                s(r#"with "quote""#),
                s(r"back\slash"),
                Value::Null,
                s("NULL"),
                s(""),
                s(" sp"),
                s("ü{}"),
                Value::Null,
                s("plain")
            ])
        );
    }

    #[test]
    fn elements_convert_with_their_kind() {
        let jsons = builtin_kind(199).unwrap();
        assert_eq!(
            json_text(&c(&jsons, r#"{"{\"a\": 1}","[1, 2]",NULL}"#)),
            r#"[{"a": 1},[1, 2],null]"#
        );
        assert_eq!(
            c(&builtin_kind(1001).unwrap(), r#"{"\\x01ff"}"#),
            Value::Array(vec![s("Af8=")])
        );
        assert_eq!(
            c(&builtin_kind(1185).unwrap(), r#"{"2026-11-24 18:30:00+00"}"#),
            Value::Array(vec![s("2026-11-24T18:30:00Z")])
        );
        assert_eq!(
            c(&builtin_kind(1022).unwrap(), "{1e+100,-Infinity}"),
            Value::Array(vec![n("1e+100"), s("-Infinity")])
        );
        // an array of a domain over int[]: each element is itself an array's text
        let nested = arr(arr(Kind::Int));
        assert_eq!(json_text(&c(&nested, r#"{"{1,2}","{3}",NULL}"#)), "[[1,2],[3],null]");
    }

    #[test]
    fn box_arrays_use_their_delimiter() {
        let boxes = Kind::Array {
            element: Box::new(Kind::Other),
            delimiter: b';',
        };
        assert_eq!(
            c(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            Value::Array(vec![s("(1,1),(0,0)"), s("(2,2),(1,1)")])
        );
    }

    #[test]
    fn malformed_arrays_become_the_whole_text() {
        let ints = builtin_kind(1007).unwrap();
        for malformed in [
            "",
            "{",
            "}",
            "{1,2",
            "{1,,2}",
            "{1,2}x",
            "{,}",
            "{1 ,2}",
            r#"{"a}"#,
            r#"{"a\"}"#,
            r#"{a"b}"#,
            "1,2",
            "{{1},2}",
            "{1,{2}}",
            "{1}{2}",
            "{{{{{{{1}}}}}}}",
        ] {
            assert_eq!(c(&ints, malformed), s(malformed), "{malformed}");
        }
        // six dimensions are allowed
        assert_eq!(json_text(&c(&ints, "{{{{{{1}}}}}}")), "[[[[[[1]]]]]]");
        // an element that does not parse as its kind is a string, not a malformed array
        assert_eq!(c(&ints, "{1,x}"), Value::Array(vec![Value::Int(1), s("x")]));
    }

    #[test]
    fn random_text_never_panics() {
        let kinds = [
            Kind::Bool,
            Kind::Int,
            Kind::Numeric,
            Kind::Float,
            Kind::Json,
            Kind::Bytea,
            Kind::Timestamp,
            Kind::Timestamptz,
            arr(Kind::Int),
            arr(arr(Kind::Timestamptz)),
        ];
        let alphabet = br#"{}[]:=,;"\NUL0123456789-+.eE xT"#;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            for kind in &kinds {
                let _ = convert(kind, &text);
            }
        }
    }
}
