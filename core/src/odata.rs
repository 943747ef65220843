//! The OData subscriber filter of Azure SignalR and Web PubSub: which connections a multicast
//! reaches (the service protocol's extension key 4, and the REST API's `filter`).
//!
//! A filter is a boolean expression over three identifiers, matched in any case: `userId` and
//! `connectionId` (strings, `userId` may be `null`) and `groups` (the connection's groups, for
//! `'g' in groups`). It has `and`, `or`, `not`, parentheses, `true` and `false`;
//! the comparisons `eq ne gt ge lt le`; `in` with a parenthesised list of literals or with
//! `groups`; string literals in single quotes (`''` is a quote), integers and `null`; and the
//! string functions `length`, `tolower`, `toupper`, `trim`, `concat`, `indexof`, `substring`,
//! `startswith`, `endswith`, `contains` and `substringof`.
//!
//! ```
//! use signalr_relay_core::odata::{Filter, Subject};
//!
//! struct Conn;
//! impl Subject for Conn {
//!     fn user_id(&self) -> Option<&str> { Some("alice") }
//!     fn connection_id(&self) -> &str { "c1" }
//!     fn in_group(&self, group: &str) -> bool { group == "admins" }
//! }
//! let f = Filter::parse("userId eq 'alice' and not ('guests' in groups)").unwrap();
//! assert!(f.matches(&Conn));
//! ```
//!
//! Bounded: a filter is at most [`MAX_FILTER_LEN`] bytes and [`MAX_DEPTH`] levels deep, so that
//! parsing and evaluating it per recipient costs a bounded amount.

use std::fmt;

/// The longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
/// The deepest nesting accepted (parentheses, `not`, function arguments).
pub const MAX_DEPTH: usize = 32;

/// What a filter is evaluated against: one connection.
pub trait Subject {
    /// Its user, if it has one.
    fn user_id(&self) -> Option<&str>;
    /// Its connection id.
    fn connection_id(&self) -> &str;
    /// Whether it is in `group`.
    fn in_group(&self, group: &str) -> bool;
}

/// Why a filter does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid filter: {}", self.0)
    }
}

impl std::error::Error for FilterError {}

fn error<T>(why: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(why.into()))
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Expr);

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Literal(Value),
    UserId,
    ConnectionId,
    /// `x in groups`.
    InGroups(Box<Self>),
    In(Box<Self>, Vec<Value>),
    Not(Box<Self>),
    And(Box<Self>, Box<Self>),
    Or(Box<Self>, Box<Self>),
    Compare(Box<Self>, Op, Box<Self>),
    Call(Function, Vec<Self>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Length,
    ToLower,
    ToUpper,
    Trim,
    Concat,
    IndexOf,
    Substring,
    StartsWith,
    EndsWith,
    Contains,
    SubstringOf,
}

impl Function {
    fn named(name: &str) -> Option<(Self, std::ops::RangeInclusive<usize>)> {
        let lower = name.to_ascii_lowercase();
        Some(match lower.as_str() {
            "length" => (Self::Length, 1..=1),
            "tolower" => (Self::ToLower, 1..=1),
            "toupper" => (Self::ToUpper, 1..=1),
            "trim" => (Self::Trim, 1..=1),
            "concat" => (Self::Concat, 2..=2),
            "indexof" => (Self::IndexOf, 2..=2),
            "substring" => (Self::Substring, 2..=3),
            "startswith" => (Self::StartsWith, 2..=2),
            "endswith" => (Self::EndsWith, 2..=2),
            "contains" => (Self::Contains, 2..=2),
            "substringof" => (Self::SubstringOf, 2..=2),
            _ => return None,
        })
    }
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
}

impl Filter {
    /// Parses a filter.
    ///
    /// # Errors
    /// A [`FilterError`] saying what is wrong: a syntax error, an unknown identifier or
    /// function, or a filter over the size or depth bounds.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_FILTER_LEN {
            return error(format!("longer than {MAX_FILTER_LEN} bytes"));
        }
        let tokens = lex(text)?;
        let mut p = Parser { tokens, at: 0 };
        let expr = p.or(0)?;
        if p.at != p.tokens.len() {
            return error(format!("unexpected {:?}", p.tokens[p.at]));
        }
        Ok(Self(expr))
    }

    /// Whether the connection passes the filter (an expression that is not `true` does not).
    pub fn matches(&self, subject: &dyn Subject) -> bool {
        eval(&self.0, subject) == Value::Bool(true)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Int(i64),
    Open,
    Close,
    Comma,
}

fn lex(text: &str) -> Result<Vec<Token>, FilterError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) if chars.peek().map(|&(_, c)| c) == Some('\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some((_, '\'')) => break,
                        Some((_, c)) => s.push(c),
                        None => return error("an unterminated string"),
                    }
                }
                out.push(Token::Str(s));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let mut end = i + c.len_utf8();
                chars.next();
                while let Some(&(j, d)) = chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    end = j + 1;
                    chars.next();
                }
                let n = text[i..end]
                    .parse::<i64>()
                    .or_else(|_| error(format!("a bad number {:?}", &text[i..end])))?;
                out.push(Token::Int(n));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i;
                while let Some(&(j, d)) = chars.peek() {
                    if !(d.is_ascii_alphanumeric() || d == '_') {
                        break;
                    }
                    end = j + 1;
                    chars.next();
                }
                out.push(Token::Word(text[i..end].to_owned()));
            }
            other => return error(format!("an unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, token: &Token) -> Result<(), FilterError> {
        if self.tokens.get(self.at) == Some(token) {
            self.at += 1;
            Ok(())
        } else {
            error(format!("expected {token:?}"))
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.and(depth)?;
        while self.peek_word("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.unary(depth)?;
        while self.peek_word("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary(depth)?));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth >= MAX_DEPTH {
            return error(format!("nested deeper than {MAX_DEPTH}"));
        }
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        self.comparison(depth)
    }

    fn comparison(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let left = self.operand(depth)?;
        let op = match self.tokens.get(self.at) {
            Some(Token::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "eq" => Some(Op::Eq),
                "ne" => Some(Op::Ne),
                "gt" => Some(Op::Gt),
                "ge" => Some(Op::Ge),
                "lt" => Some(Op::Lt),
                "le" => Some(Op::Le),
                "in" => {
                    self.at += 1;
                    return self.in_list(left);
                }
                _ => None,
            },
            _ => None,
        };
        let Some(op) = op else {
            return Ok(left);
        };
        self.at += 1;
        let right = self.operand(depth)?;
        Ok(Expr::Compare(Box::new(left), op, Box::new(right)))
    }

    fn in_list(&mut self, left: Expr) -> Result<Expr, FilterError> {
        if self.peek_word("groups") {
            self.at += 1;
            return Ok(Expr::InGroups(Box::new(left)));
        }
        self.expect(&Token::Open)?;
        let mut values = Vec::new();
        loop {
            values.push(match self.tokens.get(self.at) {
                Some(Token::Str(s)) => Value::Str(s.clone()),
                Some(Token::Int(n)) => Value::Int(*n),
                Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => Value::Null,
                _ => return error("expected a literal in the list"),
            });
            self.at += 1;
            match self.tokens.get(self.at) {
                Some(Token::Comma) => self.at += 1,
                Some(Token::Close) => {
                    self.at += 1;
                    return Ok(Expr::In(Box::new(left), values));
                }
                _ => return error("expected ',' or ')' in the list"),
            }
        }
    }

    fn operand(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth >= MAX_DEPTH {
            return error(format!("nested deeper than {MAX_DEPTH}"));
        }
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        Ok(match token {
            Some(Token::Open) => {
                let inner = self.or(depth + 1)?;
                self.expect(&Token::Close)?;
                inner
            }
            Some(Token::Str(s)) => Expr::Literal(Value::Str(s)),
            Some(Token::Int(n)) => Expr::Literal(Value::Int(n)),
            Some(Token::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "null" => Expr::Literal(Value::Null),
                "true" => Expr::Literal(Value::Bool(true)),
                "false" => Expr::Literal(Value::Bool(false)),
                "userid" => Expr::UserId,
                "connectionid" => Expr::ConnectionId,
                _ => {
                    let Some((function, arity)) = Function::named(&w) else {
                        return error(format!("an unknown identifier or function {w:?}"));
                    };
                    self.expect(&Token::Open)?;
                    let mut args = vec![self.or(depth + 1)?];
                    while self.tokens.get(self.at) == Some(&Token::Comma) {
                        self.at += 1;
                        args.push(self.or(depth + 1)?);
                    }
                    self.expect(&Token::Close)?;
                    if !arity.contains(&args.len()) {
                        return error(format!("{w} takes {arity:?} arguments"));
                    }
                    Expr::Call(function, args)
                }
            },
            other => return error(format!("expected a value, found {other:?}")),
        })
    }
}

fn eval(expr: &Expr, s: &dyn Subject) -> Value {
    let text = |v: Value| match v {
        Value::Str(s) => Some(s),
        _ => None,
    };
    match expr {
        Expr::Literal(v) => v.clone(),
        Expr::UserId => s
            .user_id()
            .map_or(Value::Null, |u| Value::Str(u.to_owned())),
        Expr::ConnectionId => Value::Str(s.connection_id().to_owned()),
        Expr::InGroups(e) => Value::Bool(text(eval(e, s)).is_some_and(|g| s.in_group(&g))),
        Expr::In(e, values) => {
            let v = eval(e, s);
            Value::Bool(values.contains(&v))
        }
        Expr::Not(e) => match eval(e, s) {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        Expr::And(a, b) => {
            Value::Bool(eval(a, s) == Value::Bool(true) && eval(b, s) == Value::Bool(true))
        }
        Expr::Or(a, b) => {
            Value::Bool(eval(a, s) == Value::Bool(true) || eval(b, s) == Value::Bool(true))
        }
        Expr::Compare(a, op, b) => {
            let (a, b) = (eval(a, s), eval(b, s));
            let same_kind = std::mem::discriminant(&a) == std::mem::discriminant(&b);
            Value::Bool(match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                _ if !same_kind || a == Value::Null => false,
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                Op::Le => a <= b,
            })
        }
        Expr::Call(f, args) => {
            let mut values = args.iter().map(|a| eval(a, s));
            let first = values.next().and_then(text);
            let second = values.next();
            let third = values.next();
            let Some(x) = first else {
                return Value::Null;
            };
            let int = |v: Option<Value>| match v {
                Some(Value::Int(n)) => usize::try_from(n).ok(),
                _ => None,
            };
            let chars = || x.chars();
            match f {
                Function::Length => Value::Int(i64::try_from(chars().count()).unwrap_or(i64::MAX)),
                Function::ToLower => Value::Str(x.to_lowercase()),
                Function::ToUpper => Value::Str(x.to_uppercase()),
                Function::Trim => Value::Str(x.trim().to_owned()),
                Function::Substring => match int(second) {
                    Some(from) => {
                        let rest = chars().skip(from);
                        Value::Str(match third {
                            None => rest.collect(),
                            t => rest.take(int(t).unwrap_or(0)).collect(),
                        })
                    }
                    None => Value::Null,
                },
                f => {
                    let Some(y) = second.and_then(text) else {
                        return Value::Null;
                    };
                    match f {
                        Function::Concat => Value::Str(x + &y),
                        Function::IndexOf => Value::Int(x.find(&y).map_or(-1, |byte| {
                            i64::try_from(x[..byte].chars().count()).unwrap_or(-1)
                        })),
                        Function::StartsWith => Value::Bool(x.starts_with(&y)),
                        Function::EndsWith => Value::Bool(x.ends_with(&y)),
                        Function::Contains => Value::Bool(x.contains(&y)),
                        Function::SubstringOf => Value::Bool(y.contains(&x)),
                        _ => Value::Null,
                    }
                }
            }
        }
    }
}

/// Parses `data` as a filter and, when it parses, evaluates it against a few connections: no
/// panic, whatever the input (the body of the `odata` fuzz target).
#[cfg(any(test, feature = "__fuzz"))]
pub(crate) fn fuzz_filter(data: &[u8]) {
    struct Conn(Option<&'static str>, &'static str, &'static [&'static str]);
    impl Subject for Conn {
        fn user_id(&self) -> Option<&str> {
            self.0
        }
        fn connection_id(&self) -> &str {
            self.1
        }
        fn in_group(&self, group: &str) -> bool {
            self.2.contains(&group)
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(filter) = Filter::parse(text) {
        for conn in [
            Conn(Some("alice"), "c1", &["admins", "g"]),
            Conn(None, "c2", &[]),
            Conn(Some(""), "ünïcode-€", &["ünï"]),
        ] {
            let _ = filter.matches(&conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Conn(Option<&'static str>, &'static str, &'static [&'static str]);

    impl Subject for Conn {
        fn user_id(&self) -> Option<&str> {
            self.0
        }
        fn connection_id(&self) -> &str {
            self.1
        }
        fn in_group(&self, group: &str) -> bool {
            self.2.contains(&group)
        }
    }

    const ALICE: Conn = Conn(Some("alice"), "c-1", &["admins", "room"]);
    const ANON: Conn = Conn(None, "c-2", &[]);

    fn check(filter: &str, alice: bool, anon: bool) {
        let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(
            (f.matches(&ALICE), f.matches(&ANON)),
            (alice, anon),
            "{filter}"
        );
    }

    #[test]
    fn the_documented_examples() {
        check("userId eq 'alice'", true, false);
        check("UserId EQ 'alice'", true, false);
        check("userId eq null", false, true);
        check("userId ne null", true, false);
        check("connectionId ne 'c-1'", false, true);
        check("'admins' in groups", true, false);
        check("userId in ('bob', 'alice')", true, false);
        check("userId in ('bob', null)", false, true);
        check("length(userId) le 10 and length(userId) gt 3", true, false);
        check("length(userId) gt 10 or length(userId) le 3", false, false);
        check("not endswith(userId, 'milk')", true, false);
        check("userId eq 'alice' or (not ('room' in groups))", true, true);
        check(
            "startswith(connectionId, 'c-') and contains(tolower(toupper(userId)), 'lic')",
            true,
            false,
        );
        check(
            "substringof('lic', userId) and indexof(userId, 'ice') eq 2",
            true,
            false,
        );
        check(
            "substring(userId, 1) eq 'lice' and substring(userId, 1, 2) eq 'li'",
            true,
            false,
        );
        check(
            "concat(userId, connectionId) eq 'alicec-1' and trim(' x ') eq 'x'",
            true,
            false,
        );
        check("true", true, true);
        check("false or userId gt 'a'", true, false);
        check("userId eq 'it''s'", false, false);
    }

    #[test]
    fn bad_filters_are_errors() {
        for bad in [
            "",
            "userId eq",
            "userId eq 'alice",
            "nosuch eq 'a'",
            "frobnicate(userId)",
            "length(userId, 1) eq 5",
            "userId in ('a'",
            "userId in (userId)",
            "(userId eq 'a'",
            "userId eq 'a')",
            "userId eq 'a' and",
            "userId $ 'a'",
            "99999999999999999999 eq 1",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?}");
        }
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(Filter::parse(&deep).is_err());
        let nots = format!("{}true", "not ".repeat(100));
        assert!(Filter::parse(&nots).is_err());
        assert!(Filter::parse(&"x".repeat(MAX_FILTER_LEN + 1)).is_err());
    }

    #[test]
    fn the_fuzz_body_takes_seeds_and_garbage() {
        for input in [
            &b"userId eq 'alice' and not ('g' in groups)"[..],
            b"substring(connectionId, 99, 99) eq ''",
            b"\xff\xfe",
            b"((((",
        ] {
            fuzz_filter(input);
        }
    }
}
