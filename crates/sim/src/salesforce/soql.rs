//! The simulator's `query` resource: a SOQL lexer, parser and evaluator over the simulator's
//! Orders (with the Account relationship and the OrderItems subquery), plus the one Product2
//! query the daemon sends.
//!
//! Hand-written: it is the tiny subset of SOQL the daemon sends (the rest is rejected loudly),
//! and no crate parses SOQL.
//!
//! Invariants:
//! * Queries select candidate records through indices (`Id`, `Activation_Status__c`) before
//!   evaluating the full WHERE clause; only unusual shapes fall back to a scan.
//! * Field names are checked before any record is read: an unknown field is `INVALID_FIELD`
//!   whether or not a record matches.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{
    NOT_FOUND_MSG, order_url, parse_datetime, rest_auth, rest_error, rest_fault, rest_json,
    valid_version,
};
use crate::ids::RecordId;
use crate::{AccountRec, OrderRec, Simulator, State as SimState};

/// OrderItem fields a subquery may select (canonical spelling).
const ITEM_FIELDS: &[&str] = &[
    "Id",
    "OrderId",
    "Quantity",
    "UnitPrice",
    "Product2Id",
    "Product2.Id",
    "Product2.Name",
    "Product2.ProductCode",
    "Product2.WHMCS_Product_ID__c",
    "Product2.WHMCS_Billing_Cycle__c",
];
const ACCOUNT_FIELDS: &[&str] = &["Id", "Name", "WHMCS_Client_ID__c"];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Op(Op),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    /// Unquoted literal: a datetime or date.
    Raw(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, Op, Lit),
    In(String, Vec<Lit>, bool),
    Like(String, String),
}

#[derive(Debug, Clone, PartialEq)]
enum SelField {
    Order(String),
    Account(String),
}

#[derive(Debug, Default)]
struct Soql {
    fields: Vec<String>,
    /// Fields of the `(SELECT … FROM OrderItems)` subquery, when present.
    items: Option<Vec<String>>,
    filter: Option<Expr>,
    limit: Option<usize>,
    offset: usize,
    /// `ORDER BY` keys: field, descending, nulls first. Ties (and no keys) go by Id.
    order_by: Vec<(String, bool, bool)>,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            b')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            b',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            b'=' => {
                out.push(Tok::Op(Op::Eq));
                i += 1;
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Op(Op::Ne));
                i += 2;
            }
            b'<' => match b.get(i + 1) {
                Some(b'=') => {
                    out.push(Tok::Op(Op::Le));
                    i += 2;
                }
                Some(b'>') => {
                    out.push(Tok::Op(Op::Ne));
                    i += 2;
                }
                _ => {
                    out.push(Tok::Op(Op::Lt));
                    i += 1;
                }
            },
            b'>' => {
                if b.get(i + 1) == Some(&b'=') {
                    out.push(Tok::Op(Op::Ge));
                    i += 2;
                } else {
                    out.push(Tok::Op(Op::Gt));
                    i += 1;
                }
            }
            b'\'' => {
                let mut v = Vec::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some(b'\\') => {
                            let Some(&n) = b.get(i + 1) else {
                                return Err("unterminated string literal".into());
                            };
                            v.push(match n {
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'r' => b'\r',
                                other => other,
                            });
                            i += 2;
                        }
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(&o) => {
                            v.push(o);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(String::from_utf8_lossy(&v).into_owned()));
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => {
                let numeric = c.is_ascii_digit() || c == b'-';
                let start = i;
                while i < b.len() {
                    let d = b[i];
                    let ok = d.is_ascii_alphanumeric()
                        || d == b'_'
                        || d == b'.'
                        || d == b':'
                        || (numeric && (d == b'-' || d == b'+'));
                    if !ok {
                        break;
                    }
                    i += 1;
                }
                out.push(Tok::Word(s[start..i].to_owned()));
            }
            other => return Err(format!("unexpected character '{}'", other as char)),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.i).cloned();
        self.i += 1;
        t
    }

    fn kw(&mut self, k: &str) -> bool {
        match self.peek() {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k) => {
                self.i += 1;
                true
            }
            _ => false,
        }
    }

    fn expect_kw(&mut self, k: &str) -> Result<(), String> {
        if self.kw(k) {
            Ok(())
        } else {
            Err(format!("expected {k}"))
        }
    }

    fn word(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    fn query(&mut self) -> Result<Soql, String> {
        let mut q = Soql::default();
        self.expect_kw("SELECT")?;
        loop {
            if self.peek() == Some(&Tok::LParen) {
                self.i += 1;
                if q.items.is_some() {
                    return Err("only one OrderItems subquery is supported".into());
                }
                q.items = Some(self.subquery()?);
            } else {
                q.fields.push(self.word()?);
            }
            if self.peek() == Some(&Tok::Comma) {
                self.i += 1;
            } else {
                break;
            }
        }
        self.expect_kw("FROM")?;
        let object = self.word()?;
        if !object.eq_ignore_ascii_case("Order") {
            return Err(format!("sObject type '{object}' is not supported"));
        }
        if self.kw("WHERE") {
            q.filter = Some(self.or()?);
        }
        if self.kw("ORDER") {
            self.expect_kw("BY")?;
            loop {
                let field = self.word()?;
                let desc = if self.kw("DESC") {
                    true
                } else {
                    self.kw("ASC");
                    false
                };
                // SOQL's default: nulls first ascending, last descending.
                let mut nulls_first = !desc;
                if self.kw("NULLS") {
                    nulls_first = if self.kw("FIRST") {
                        true
                    } else {
                        self.expect_kw("LAST")?;
                        false
                    };
                }
                q.order_by.push((field, desc, nulls_first));
                if self.peek() == Some(&Tok::Comma) {
                    self.i += 1;
                } else {
                    break;
                }
            }
        }
        if self.kw("LIMIT") {
            q.limit = Some(
                self.word()?
                    .parse()
                    .map_err(|_| "LIMIT needs a number".to_owned())?,
            );
        }
        if self.kw("OFFSET") {
            q.offset = self
                .word()?
                .parse()
                .map_err(|_| "OFFSET needs a number".to_owned())?;
        }
        if let Some(t) = self.peek() {
            return Err(format!("unexpected token {t:?}"));
        }
        Ok(q)
    }

    /// After `(`: `SELECT f, … FROM OrderItems [anything] )`.
    fn subquery(&mut self) -> Result<Vec<String>, String> {
        self.expect_kw("SELECT")?;
        let mut fields = Vec::new();
        loop {
            fields.push(self.word()?);
            if self.peek() == Some(&Tok::Comma) {
                self.i += 1;
            } else {
                break;
            }
        }
        self.expect_kw("FROM")?;
        let rel = self.word()?;
        if !rel.eq_ignore_ascii_case("OrderItems") {
            return Err(format!(
                "Didn't understand relationship '{rel}' in FROM part of query call"
            ));
        }
        let mut depth = 1;
        while depth > 0 {
            match self.next() {
                Some(Tok::LParen) => depth += 1,
                Some(Tok::RParen) => depth -= 1,
                Some(_) => {}
                None => return Err("unbalanced parentheses".into()),
            }
        }
        Ok(fields)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.kw("OR") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.not()?;
        while self.kw("AND") {
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.kw("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.i += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::RParen) {
                return Err("expected )".into());
            }
            return Ok(e);
        }
        self.cond()
    }

    fn cond(&mut self) -> Result<Expr, String> {
        let field = self.word()?;
        match self.next() {
            Some(Tok::Op(op)) => Ok(Expr::Cmp(field, op, self.lit()?)),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("IN") => {
                Ok(Expr::In(field, self.list()?, false))
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("NOT") => {
                self.expect_kw("IN")?;
                Ok(Expr::In(field, self.list()?, true))
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("LIKE") => match self.next() {
                Some(Tok::Str(p)) => Ok(Expr::Like(field, p)),
                _ => Err("LIKE needs a string".into()),
            },
            other => Err(format!("unexpected token {other:?} after {field}")),
        }
    }

    fn list(&mut self) -> Result<Vec<Lit>, String> {
        if self.next() != Some(Tok::LParen) {
            return Err("expected ( after IN".into());
        }
        let mut v = Vec::new();
        loop {
            v.push(self.lit()?);
            match self.next() {
                Some(Tok::Comma) => {}
                Some(Tok::RParen) => return Ok(v),
                _ => return Err("expected , or ) in IN list".into()),
            }
        }
    }

    fn lit(&mut self) -> Result<Lit, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Word(w)) => Ok(if w.eq_ignore_ascii_case("null") {
                Lit::Null
            } else if w.eq_ignore_ascii_case("true") {
                Lit::Bool(true)
            } else if w.eq_ignore_ascii_case("false") {
                Lit::Bool(false)
            } else if let Ok(n) = w.parse::<f64>() {
                Lit::Num(n)
            } else if w.as_bytes().first().is_some_and(u8::is_ascii_digit) {
                Lit::Raw(w)
            } else {
                return Err(format!("unexpected literal {w}"));
            }),
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
}

fn parse_soql(q: &str) -> Result<Soql, String> {
    Parser {
        toks: lex(q)?,
        i: 0,
    }
    .query()
}

/// Resolves a selected/filtered Order field to its canonical form.
fn resolve_field(st: &SimState, name: &str) -> Option<SelField> {
    if let Some((rel, f)) = name.split_once('.') {
        if !rel.eq_ignore_ascii_case("Account") {
            return None;
        }
        return ACCOUNT_FIELDS
            .iter()
            .find(|a| a.eq_ignore_ascii_case(f))
            .map(|a| SelField::Account((*a).to_owned()));
    }
    st.canonical_field(name)
        .map(|c| SelField::Order(c.to_owned()))
}

fn no_such_column(name: &str, entity: &str) -> String {
    format!(
        "No such column '{name}' on entity '{entity}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
    )
}

fn expr_fields<'a>(e: &'a Expr, out: &mut Vec<&'a str>) {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            expr_fields(a, out);
            expr_fields(b, out);
        }
        Expr::Not(a) => expr_fields(a, out),
        Expr::Cmp(f, _, _) | Expr::In(f, _, _) | Expr::Like(f, _) => out.push(f),
    }
}

fn account_value(acc: Option<&AccountRec>, field: &str) -> Value {
    let Some(acc) = acc else {
        return Value::Null;
    };
    match field {
        "Id" => Value::from(acc.id.as_str()),
        "Name" => Value::from(format!("Account {}", acc.id.short())),
        "WHMCS_Client_ID__c" => acc
            .whmcs_client_id
            .clone()
            .map(Value::from)
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn value_of(st: &SimState, rec: &OrderRec, f: &SelField) -> Value {
    match f {
        SelField::Order(c) => rec.fields.get(c).cloned().unwrap_or(Value::Null),
        SelField::Account(c) => account_value(st.accounts.get(&rec.account_id), c),
    }
}

fn str_eq(field: &str, lit: &str) -> bool {
    if field.len() == 18 && (lit.len() == 15 || lit.len() == 18) {
        if let (Ok(a), Ok(b)) = (RecordId::parse(field), RecordId::parse(lit)) {
            return a == b;
        }
    }
    field.eq_ignore_ascii_case(lit)
}

fn ordering(op: Op, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => o == Equal,
        Op::Ne => o != Equal,
        Op::Lt => o == Less,
        Op::Le => o != Greater,
        Op::Gt => o == Greater,
        Op::Ge => o != Less,
    }
}

fn compare(v: &Value, op: Op, lit: &Lit) -> bool {
    if matches!(lit, Lit::Null) {
        return match op {
            Op::Eq => v.is_null(),
            Op::Ne => !v.is_null(),
            _ => false,
        };
    }
    if v.is_null() {
        return op == Op::Ne;
    }
    match lit {
        Lit::Null => false,
        Lit::Bool(b) => v.as_bool().is_some_and(|x| ordering(op, x.cmp(b))),
        Lit::Num(n) => {
            let x = v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse::<f64>().ok()));
            x.and_then(|x| x.partial_cmp(n))
                .is_some_and(|o| ordering(op, o))
        }
        Lit::Str(s) => match v.as_str() {
            Some(x) if matches!(op, Op::Eq | Op::Ne) => str_eq(x, s) == (op == Op::Eq),
            Some(x) => ordering(op, x.to_lowercase().cmp(&s.to_lowercase())),
            None => false,
        },
        Lit::Raw(r) => match v.as_str() {
            Some(x) => match (parse_datetime(x), parse_datetime(r)) {
                (Some(a), Some(b)) => ordering(op, a.cmp(&b)),
                _ => ordering(op, x.cmp(r.as_str())),
            },
            None => false,
        },
    }
}

fn like(v: &Value, pattern: &str) -> bool {
    let Some(s) = v.as_str() else {
        return false;
    };
    let s = s.to_lowercase();
    let p = pattern.to_lowercase();
    // '%' wildcards only; '_' is matched literally (good enough for a simulator).
    let parts: Vec<&str> = p.split('%').collect();
    let mut pos = 0;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 0 {
            if !s.starts_with(part) {
                return false;
            }
            pos = part.len();
        } else if let Some(found) = s[pos..].find(part) {
            pos += found + part.len();
        } else {
            return false;
        }
    }
    p.ends_with('%') || parts.last().is_none_or(|l| s.ends_with(l))
}

/// Orders two field values: numbers numerically, everything else as text (ISO date-times sort
/// as text).
fn compare_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => {
            let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            text(a).cmp(&text(b))
        }
    }
}

fn eval(st: &SimState, rec: &OrderRec, e: &Expr) -> bool {
    let val = |f: &str| {
        resolve_field(st, f)
            .map(|sf| value_of(st, rec, &sf))
            .unwrap_or(Value::Null)
    };
    match e {
        Expr::And(a, b) => eval(st, rec, a) && eval(st, rec, b),
        Expr::Or(a, b) => eval(st, rec, a) || eval(st, rec, b),
        Expr::Not(a) => !eval(st, rec, a),
        Expr::Cmp(f, op, lit) => compare(&val(f), *op, lit),
        Expr::In(f, lits, negated) => {
            let v = val(f);
            lits.iter().any(|l| compare(&v, Op::Eq, l)) != *negated
        }
        Expr::Like(f, p) => like(&val(f), p),
    }
}

fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    if let Expr::And(a, b) = e {
        conjuncts(a, out);
        conjuncts(b, out);
    } else {
        out.push(e);
    }
}

enum Candidates {
    Ids(Vec<RecordId>),
    All,
}

/// Picks the candidate records through an index when the filter allows it.
fn candidates(st: &SimState, filter: Option<&Expr>) -> Result<Candidates, String> {
    let Some(filter) = filter else {
        return Ok(Candidates::All);
    };
    let mut cs = Vec::new();
    conjuncts(filter, &mut cs);
    let parse_id = |s: &str| RecordId::parse(s).map_err(|_| format!("invalid ID field: {s}"));
    for c in &cs {
        match c {
            Expr::Cmp(f, Op::Eq, Lit::Str(s)) if f.eq_ignore_ascii_case("Id") => {
                return Ok(Candidates::Ids(vec![parse_id(s)?]));
            }
            Expr::In(f, lits, false) if f.eq_ignore_ascii_case("Id") => {
                let mut ids = Vec::with_capacity(lits.len());
                for l in lits {
                    match l {
                        Lit::Str(s) => {
                            let id = parse_id(s)?;
                            if !ids.contains(&id) {
                                ids.push(id);
                            }
                        }
                        other => return Err(format!("invalid ID field: {other:?}")),
                    }
                }
                return Ok(Candidates::Ids(ids));
            }
            _ => {}
        }
    }
    for c in &cs {
        if let Expr::Cmp(f, Op::Eq, Lit::Str(s)) = c {
            if !f.eq_ignore_ascii_case("Activation_Status__c") {
                continue;
            }
            let ids = st
                .by_activation
                .get(s.as_str())
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default();
            return Ok(Candidates::Ids(ids));
        }
    }
    Ok(Candidates::All)
}

fn items_json(rec: &OrderRec, fields: &[&str], version: &str) -> Value {
    if rec.items.is_empty() {
        return Value::Null;
    }
    let records: Vec<Value> = rec
        .items
        .iter()
        .map(|it| {
            let mut m = Map::new();
            m.insert(
                "attributes".into(),
                json!({"type": "OrderItem", "url": format!("/services/data/{version}/sobjects/OrderItem/{}", it.id)}),
            );
            let mut product = Map::new();
            for f in fields {
                let v = match *f {
                    "Id" => Value::from(it.id.as_str()),
                    "OrderId" => Value::from(rec.id.as_str()),
                    "Quantity" => json!(it.quantity),
                    "UnitPrice" => json!(0.0),
                    "Product2Id" => Value::from(it.product2_id.as_str()),
                    other => {
                        let Some(pf) = other.strip_prefix("Product2.") else {
                            continue;
                        };
                        let pv = match pf {
                            "Id" => Value::from(it.product2_id.as_str()),
                            "Name" => Value::from(format!("Product {}", it.product2_id.short())),
                            "ProductCode" => it
                                .product_id
                                .as_ref()
                                .map(|p| Value::from(format!("WHMCS-{p}")))
                                .unwrap_or(Value::Null),
                            "WHMCS_Product_ID__c" => {
                                it.product_id.clone().map(Value::from).unwrap_or(Value::Null)
                            }
                            "WHMCS_Billing_Cycle__c" => it
                                .billing_cycle
                                .clone()
                                .map(Value::from)
                                .unwrap_or(Value::Null),
                            _ => Value::Null,
                        };
                        product.insert(pf.to_owned(), pv);
                        continue;
                    }
                };
                m.insert((*f).to_owned(), v);
            }
            if !product.is_empty() {
                product.insert(
                    "attributes".into(),
                    json!({"type": "Product2", "url": format!("/services/data/{version}/sobjects/Product2/{}", it.product2_id)}),
                );
                m.insert("Product2".into(), Value::Object(product));
            }
            Value::Object(m)
        })
        .collect();
    json!({"totalSize": records.len(), "done": true, "records": records})
}

pub(super) async fn query(
    State(sim): State<Simulator>,
    Path(version): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let inner = &sim.0;
    let q = raw
        .as_deref()
        .and_then(|r| serde_urlencoded::from_str::<Vec<(String, String)>>(r).ok())
        .and_then(|v| v.into_iter().find(|(k, _)| k == "q").map(|(_, v)| v));
    let product2 = q.as_deref().and_then(product2_query);
    let parsed = q.as_deref().map(parse_soql);

    let mut st = inner.lock();
    let usage = match rest_auth(&mut st, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !valid_version(&version) {
        return rest_error(StatusCode::NOT_FOUND, usage, "NOT_FOUND", NOT_FOUND_MSG);
    }
    match product2 {
        Some(Ok(field)) => return product2_records(&mut st, usage, &version, &field),
        Some(Err(msg)) => {
            return rest_error(StatusCode::BAD_REQUEST, usage, "MALFORMED_QUERY", &msg);
        }
        None => {}
    }
    let soql = match parsed {
        Some(Ok(s)) => s,
        Some(Err(msg)) => {
            return rest_error(StatusCode::BAD_REQUEST, usage, "MALFORMED_QUERY", &msg);
        }
        None => {
            return rest_error(
                StatusCode::BAD_REQUEST,
                usage,
                "MALFORMED_QUERY",
                "A query string has to be specified",
            );
        }
    };
    // Field validation (independent of which records match).
    let mut select = Vec::with_capacity(soql.fields.len());
    for f in &soql.fields {
        match resolve_field(&st, f) {
            Some(sf) => select.push(sf),
            None => {
                return rest_error(
                    StatusCode::BAD_REQUEST,
                    usage,
                    "INVALID_FIELD",
                    &no_such_column(f, "Order"),
                );
            }
        }
    }
    let mut item_fields: Vec<&str> = Vec::new();
    if let Some(items) = &soql.items {
        for f in items {
            match ITEM_FIELDS.iter().find(|c| c.eq_ignore_ascii_case(f)) {
                Some(c) => item_fields.push(c),
                None => {
                    return rest_error(
                        StatusCode::BAD_REQUEST,
                        usage,
                        "INVALID_FIELD",
                        &no_such_column(f, "OrderItem"),
                    );
                }
            }
        }
    }
    if let Some(filter) = &soql.filter {
        let mut names = Vec::new();
        expr_fields(filter, &mut names);
        if let Some(bad) = names.iter().find(|n| resolve_field(&st, n).is_none()) {
            return rest_error(
                StatusCode::BAD_REQUEST,
                usage,
                "INVALID_FIELD",
                &no_such_column(bad, "Order"),
            );
        }
    }
    let cands = match candidates(&st, soql.filter.as_ref()) {
        Ok(c) => c,
        Err(msg) => {
            return rest_error(
                StatusCode::BAD_REQUEST,
                usage,
                "INVALID_QUERY_FILTER_OPERATOR",
                &msg,
            );
        }
    };
    let ids: Vec<RecordId> = match cands {
        Candidates::Ids(ids) => ids,
        Candidates::All => {
            let mut all: Vec<RecordId> = st.orders.keys().cloned().collect();
            all.sort();
            all
        }
    };
    let limit = soql.limit.unwrap_or(usize::MAX);
    let mut filtered: Vec<RecordId> = ids
        .into_iter()
        .filter(|id| {
            st.orders
                .get(id)
                .is_some_and(|rec| soql.filter.as_ref().is_none_or(|f| eval(&st, rec, f)))
        })
        .collect();
    if !soql.order_by.is_empty() {
        let key = |id: &RecordId, field: &str| {
            st.orders
                .get(id)
                .and_then(|rec| resolve_field(&st, field).map(|sf| value_of(&st, rec, &sf)))
                .filter(|v| !v.is_null())
        };
        filtered.sort_by(|a, b| {
            for (field, desc, nulls_first) in &soql.order_by {
                let ord = match (key(a, field), key(b, field)) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) if *nulls_first => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some(_), None) if *nulls_first => std::cmp::Ordering::Greater,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (Some(x), Some(y)) => {
                        let o = compare_values(&x, &y);
                        if *desc { o.reverse() } else { o }
                    }
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            a.cmp(b)
        });
    }
    let matched: Vec<RecordId> = filtered.into_iter().skip(soql.offset).take(limit).collect();
    st.totals.soql += 1;
    for id in &matched {
        if let Some(rec) = st.orders.get_mut(id) {
            rec.counts.soql += 1;
        }
    }
    if let Some(r) = rest_fault(&mut st, usage) {
        return r;
    }
    let mut records = Vec::with_capacity(matched.len());
    for id in &matched {
        let Some(rec) = st.orders.get(id) else {
            continue;
        };
        let mut m = Map::new();
        m.insert(
            "attributes".into(),
            json!({"type": "Order", "url": order_url(&version, &rec.id)}),
        );
        let mut account: Option<Map<String, Value>> = None;
        for f in &select {
            match f {
                SelField::Order(c) => {
                    m.insert(c.clone(), value_of(&st, rec, f));
                }
                SelField::Account(c) => {
                    let acc = account.get_or_insert_with(|| {
                        let mut a = Map::new();
                        a.insert(
                            "attributes".into(),
                            json!({"type": "Account", "url": format!("/services/data/{version}/sobjects/Account/{}", rec.account_id)}),
                        );
                        a
                    });
                    acc.insert(c.clone(), value_of(&st, rec, f));
                }
            }
        }
        if let Some(acc) = account {
            m.insert("Account".into(), Value::Object(acc));
        }
        if soql.items.is_some() {
            m.insert("OrderItems".into(), items_json(rec, &item_fields, &version));
        }
        records.push(Value::Object(m));
    }
    rest_json(
        StatusCode::OK,
        usage,
        &json!({"totalSize": records.len(), "done": true, "records": records}),
    )
}

/// The one Product2 query the simulator answers, `SELECT WHMCS_Product_ID__c FROM Product2
/// WHERE WHMCS_Product_ID__c != null` (the products mapped to WHMCS): `None` for a query on
/// another object, `Some(Err)` for any other shape, `Some(Ok(field))` with the field as spelt.
fn product2_query(q: &str) -> Option<Result<String, String>> {
    let t: Vec<&str> = q.split_whitespace().collect();
    if !(t.len() >= 4 && t[2].eq_ignore_ascii_case("FROM") && t[3].eq_ignore_ascii_case("Product2"))
    {
        return None;
    }
    let field = "WHMCS_Product_ID__c";
    let ok = t.len() == 8
        && t[0].eq_ignore_ascii_case("SELECT")
        && t[1].eq_ignore_ascii_case(field)
        && t[4].eq_ignore_ascii_case("WHERE")
        && t[5].eq_ignore_ascii_case(field)
        && t[6] == "!="
        && t[7].eq_ignore_ascii_case("null");
    Some(if ok {
        Ok(t[1].to_owned())
    } else {
        Err(format!(
            "the simulator answers only SELECT {field} FROM Product2 WHERE {field} != null"
        ))
    })
}

/// One Product2 record per distinct WHMCS product id that a seeded Order Product references.
fn product2_records(st: &mut SimState, usage: u64, version: &str, field: &str) -> Response {
    st.totals.soql += 1;
    if let Some(r) = rest_fault(st, usage) {
        return r;
    }
    let mut products: BTreeMap<String, RecordId> = BTreeMap::new();
    for rec in st.orders.values() {
        for item in &rec.items {
            if let Some(pid) = item.product_id.as_deref().filter(|p| !p.trim().is_empty()) {
                products
                    .entry(pid.to_owned())
                    .or_insert_with(|| item.product2_id.clone());
            }
        }
    }
    let records: Vec<Value> = products
        .into_iter()
        .map(|(pid, id)| {
            json!({
                "attributes": {"type": "Product2", "url": format!("/services/data/{version}/sobjects/Product2/{id}")},
                field: pid,
            })
        })
        .collect();
    rest_json(
        StatusCode::OK,
        usage,
        &json!({"totalSize": records.len(), "done": true, "records": records}),
    )
}

/// Parses a SOQL string for tests of the parser itself.
#[cfg(test)]
fn parse_for_test(q: &str) -> Result<Soql, String> {
    parse_soql(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_daemon_read() {
        let q = parse_for_test(
            "SELECT Id, OrderNumber, Status, AccountId, Activation_Status__c, WHMCS_Order_ID__c, \
             Account.WHMCS_Client_ID__c, (SELECT Id, Quantity, Product2.WHMCS_Product_ID__c, \
             Product2.WHMCS_Billing_Cycle__c FROM OrderItems) FROM Order WHERE Id = '801000000000001AAA'",
        )
        .expect("parse");
        assert_eq!(q.fields.len(), 7);
        assert_eq!(q.items.as_ref().map(Vec::len), Some(4));
        assert_eq!(
            q.filter,
            Some(Expr::Cmp(
                "Id".into(),
                Op::Eq,
                Lit::Str("801000000000001AAA".into())
            ))
        );
    }

    #[test]
    fn parses_reconciler_shapes() {
        let q = parse_for_test(
            "SELECT Id FROM Order WHERE Activation_Status__c = 'Activating' AND \
             (Activation_Last_Attempt_At__c = null OR Activation_Last_Attempt_At__c < 2024-01-01T00:00:00Z) \
             ORDER BY CreatedDate ASC LIMIT 200",
        )
        .expect("parse");
        assert_eq!(q.limit, Some(200));
        assert!(matches!(q.filter, Some(Expr::And(_, _))));
        let q = parse_for_test(
            "SELECT Id FROM Order WHERE Id IN ('801000000000001AAA', '801000000000002AAA')",
        )
        .expect("parse");
        assert!(matches!(q.filter, Some(Expr::In(_, ref v, false)) if v.len() == 2));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "SELECT FROM Order",
            "SELECT Id FROM Account",
            "SELECT Id FROM Order WHERE Id = 'x",
            "SELECT Id FROM Order WHERE",
            "DELETE FROM Order",
            "SELECT Id FROM Order; DROP",
        ] {
            assert!(parse_for_test(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compares_datetimes_and_nulls() {
        let v = Value::from("2024-05-01T12:00:00.000+0000");
        assert!(compare(
            &v,
            Op::Lt,
            &Lit::Raw("2024-06-01T00:00:00Z".into())
        ));
        assert!(!compare(
            &v,
            Op::Gt,
            &Lit::Raw("2024-06-01T00:00:00Z".into())
        ));
        assert!(compare(&Value::Null, Op::Eq, &Lit::Null));
        assert!(!compare(
            &Value::Null,
            Op::Lt,
            &Lit::Raw("2024-06-01T00:00:00Z".into())
        ));
        assert!(compare(
            &Value::from("801000000000001AAA"),
            Op::Eq,
            &Lit::Str("801000000000001".into())
        ));
        assert!(like(&Value::from("sf-order:801"), "sf-order:%"));
        assert!(!like(&Value::from("x"), "sf-order:%"));
    }
}
