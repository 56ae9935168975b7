//! The fake ARM's fleet: more subscriptions than the primary one (each its own world of
//! VMs, scale sets, disks and snapshots, swapped in while a request for it is routed, so
//! every Compute route works in every subscription), `GET /subscriptions` (paged, with
//! states), and Resource Graph (`POST /providers/Microsoft.ResourceGraph/resources`).
//!
//! Resource Graph here parses the queries discovery sends — a table, `where` clauses
//! (`=~`, `!~`, `in~`, `tostring(tags) contains`), `extend` and `project` of dotted
//! paths (optionally `tostring(...)`), `order by id asc` — with KQL string literals and
//! their escapes. Any other shape is refused with Resource Graph's error body, so a changed
//! query cannot pass silently. Pages follow `options.$top` and `$skipToken`, answers carry
//! the user-quota headers, and a query past the quota gets 429 with Retry-After.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::fake_arm::{
    ArmState, FakeDisk, FakeScaleSet, FakeSnapshot, FakeVm, HttpRequest, HttpResponse, arm_error,
    bump, disk_json, page, scale_set_json, vm_json,
};

pub const SUBSCRIPTIONS_API: &str = "2022-12-01";
pub const GRAPH_API: &str = "2024-04-01";

#[derive(Debug, Clone)]
pub struct FakeSubscription {
    pub id: String,
    pub state: String,
}

/// One more subscription's resources.
#[derive(Debug, Default)]
pub struct World {
    pub subscription: String,
    pub vms: Vec<FakeVm>,
    pub scale_sets: Vec<FakeScaleSet>,
    pub disks: Vec<FakeDisk>,
    pub snapshots: BTreeMap<String, FakeSnapshot>,
}

#[derive(Debug, Default)]
pub struct Fleet {
    /// What `GET /subscriptions` lists; empty: the primary one, Enabled.
    pub subscriptions: Vec<FakeSubscription>,
    pub others: Vec<World>,
    /// Resource Graph quota: queries per window.
    pub quota: Option<(u32, Duration)>,
    window: Option<(Instant, u32)>,
    /// Every Resource Graph request body, in order.
    pub queries: Vec<Value>,
    /// Rows per page at most, whatever `$top` asks (Resource Graph may send fewer).
    pub page_cap: Option<usize>,
    /// Results by subscriptions and query, so the pages of one query do not each rebuild
    /// every resource; emptied by any request that may change the state.
    cache: std::collections::HashMap<String, std::sync::Arc<Vec<Value>>>,
}

fn swap(s: &mut ArmState, w: &mut World) {
    std::mem::swap(&mut s.subscription, &mut w.subscription);
    std::mem::swap(&mut s.vms, &mut w.vms);
    std::mem::swap(&mut s.scale_sets, &mut w.scale_sets);
    std::mem::swap(&mut s.disks, &mut w.disks);
    std::mem::swap(&mut s.snapshots, &mut w.snapshots);
}

/// Runs `f` with subscription `sub` swapped in as the primary world.
pub fn in_subscription<R>(s: &mut ArmState, sub: &str, f: impl FnOnce(&mut ArmState) -> R) -> R {
    if s.subscription.eq_ignore_ascii_case(sub) {
        return f(s);
    }
    let i = match s
        .fleet
        .others
        .iter()
        .position(|w| w.subscription.eq_ignore_ascii_case(sub))
    {
        Some(i) => i,
        None => {
            s.fleet.others.push(World {
                subscription: sub.to_string(),
                ..Default::default()
            });
            s.fleet.others.len() - 1
        }
    };
    let mut w = std::mem::take(&mut s.fleet.others[i]);
    swap(s, &mut w);
    let r = f(s);
    swap(s, &mut w);
    s.fleet.others[i] = w;
    r
}

/// Adds a VM (and its disks) in subscription `sub`, listing it in `GET /subscriptions`.
pub fn add_vm_in(s: &mut ArmState, sub: &str, vm: FakeVm) {
    add_subscription(s, sub, "Enabled");
    in_subscription(s, sub, |s| s.add_vm(vm));
}

/// Lists `sub` in `GET /subscriptions` with `state` (the primary is listed first).
pub fn add_subscription(s: &mut ArmState, sub: &str, state: &str) {
    if s.fleet.subscriptions.is_empty() {
        let primary = s.subscription.clone();
        s.fleet.subscriptions.push(FakeSubscription {
            id: primary,
            state: "Enabled".into(),
        });
    }
    match s
        .fleet
        .subscriptions
        .iter_mut()
        .find(|x| x.id.eq_ignore_ascii_case(sub))
    {
        Some(x) => x.state = state.to_string(),
        None => s.fleet.subscriptions.push(FakeSubscription {
            id: sub.to_string(),
            state: state.to_string(),
        }),
    }
}

/// The fleet's routes; None for any other request.
pub fn route(
    s: &mut ArmState,
    req: &HttpRequest,
    base: &str,
    low: &[&str],
) -> Option<HttpResponse> {
    match (req.method.as_str(), low) {
        ("GET", ["subscriptions"]) => Some(list_subscriptions(s, req, base)),
        ("POST", ["providers", "microsoft.resourcegraph", "resources"]) => Some(graph(s, req)),
        (_, ["subscriptions", sub, _, ..])
            if !s.subscription.eq_ignore_ascii_case(sub)
                && s.fleet
                    .others
                    .iter()
                    .any(|w| w.subscription.eq_ignore_ascii_case(sub)) =>
        {
            let sub = sub.to_string();
            Some(in_subscription(s, &sub, |s| {
                super::fake_arm::route(s, req, base)
            }))
        }
        _ => None,
    }
}

fn list_subscriptions(s: &mut ArmState, req: &HttpRequest, base: &str) -> HttpResponse {
    bump(s, "list_subscriptions");
    if req.param("api-version").as_deref() != Some(SUBSCRIPTIONS_API) {
        return arm_error(
            400,
            "InvalidApiVersionParameter",
            "api-version 2022-12-01 expected",
        );
    }
    let listed = if s.fleet.subscriptions.is_empty() {
        vec![FakeSubscription {
            id: s.subscription.clone(),
            state: "Enabled".into(),
        }]
    } else {
        s.fleet.subscriptions.clone()
    };
    let items = listed
        .iter()
        .map(|x| {
            json!({"id": format!("/subscriptions/{}", x.id), "subscriptionId": x.id,
                   "displayName": format!("sub {}", &x.id[x.id.len().saturating_sub(4)..]),
                   "state": x.state, "tenantId": "00000000-0000-0000-0000-00000000feed"})
        })
        .collect();
    page(req, base, items, s.config.page_size)
}

// ---------------------------------------------------------------- Resource Graph

fn graph_error(message: &str) -> HttpResponse {
    HttpResponse::json(
        400,
        json!({"error": {"code": "BadRequest",
            "message": "Please provide below info when asking for support: timestamp = fake, correlationId = fake.",
            "details": [{"code": "InvalidQuery", "message": format!("Query is invalid. Please refer to the documentation for the Azure Resource Graph service and fix the error before retrying. {message}")}]}}),
    )
}

fn fmt_hms(d: Duration) -> String {
    let t = d.as_secs();
    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

/// Takes one unit of the quota: the headers to send, or the 429 when it is used up.
fn take_quota(s: &mut ArmState) -> Result<Vec<(String, String)>, HttpResponse> {
    let Some((limit, window)) = s.fleet.quota else {
        return Ok(vec![]);
    };
    let now = Instant::now();
    let (start, used) = match s.fleet.window {
        Some((start, used)) if now < start + window => (start, used),
        _ => (now, 0),
    };
    let resets = (start + window).saturating_duration_since(now);
    if used >= limit {
        bump(s, "graph_quota_exceeded");
        s.fleet.window = Some((start, used));
        return Err(
            arm_error(429, "RateLimiting", "Please retry after the quota resets.")
                .header("retry-after", resets.as_secs_f64().ceil().to_string())
                .header("x-ms-user-quota-remaining", "0")
                .header("x-ms-user-quota-resets-after", fmt_hms(resets)),
        );
    }
    s.fleet.window = Some((start, used + 1));
    Ok(vec![
        (
            "x-ms-user-quota-remaining".into(),
            (limit - used - 1).to_string(),
        ),
        // Rounded up: a client that waits this long finds a new window.
        (
            "x-ms-user-quota-resets-after".into(),
            fmt_hms(resets + Duration::from_millis(999)),
        ),
    ])
}

fn graph(s: &mut ArmState, req: &HttpRequest) -> HttpResponse {
    bump(s, "resource_graph");
    if req.param("api-version").as_deref() != Some(GRAPH_API) {
        return arm_error(
            400,
            "InvalidApiVersionParameter",
            "api-version 2024-04-01 expected",
        );
    }
    let headers = match take_quota(s) {
        Ok(h) => h,
        Err(throttled) => return throttled,
    };
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return graph_error(&format!("The request body is not JSON: {e}")),
    };
    s.fleet.queries.push(body.clone());
    let mut resp = match answer(s, &body) {
        Ok(v) => HttpResponse::json(200, v),
        Err(message) => graph_error(&message),
    };
    for (k, v) in headers {
        resp = resp.header(&k, v);
    }
    resp
}

fn answer(s: &mut ArmState, body: &Value) -> Result<Value, String> {
    let subs: Vec<String> = body["subscriptions"]
        .as_array()
        .ok_or("subscriptions must be given")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_ascii_lowercase))
        .collect();
    if subs.is_empty() || subs.len() > 1000 {
        return Err(format!("{} subscriptions: 1 to 1000 allowed", subs.len()));
    }
    let query = parse(body["query"].as_str().ok_or("query must be a string")?)?;
    let options = &body["options"];
    let top = options["$top"].as_u64().unwrap_or(100) as usize;
    if !(1..=1000).contains(&top) {
        return Err(format!("$top {top} is outside 1..1000"));
    }
    if options["resultFormat"].as_str() != Some("objectArray") {
        return Err("only resultFormat objectArray is served".into());
    }
    let offset = match options["$skipToken"].as_str() {
        None => 0,
        Some(t) => t
            .strip_prefix("ew0KfQ==.")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or(format!("invalid $skipToken {t}"))?,
    };
    let key = format!("{}\n{}", subs.join(","), body["query"]);
    let out = match s.fleet.cache.get(&key) {
        Some(rows) => rows.clone(),
        None => {
            let rows = std::sync::Arc::new(evaluate(s, &subs, &query)?);
            s.fleet.cache.insert(key, rows.clone());
            rows
        }
    };
    let total = out.len();
    let end = (offset + top.min(s.fleet.page_cap.unwrap_or(top))).min(total);
    let data: Vec<Value> = out
        .get(offset..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut v = json!({"totalRecords": total, "count": data.len(), "data": data,
                       "facets": [], "resultTruncated": "false"});
    if end < total {
        v["$skipToken"] = json!(format!("ew0KfQ==.{end}"));
    }
    Ok(v)
}

/// The query's rows over the subscriptions `subs` (lower case), sorted by id.
fn evaluate(s: &mut ArmState, subs: &[String], query: &Query) -> Result<Vec<Value>, String> {
    // Only the type the first stage asks for is built (every query starts with one).
    let kind = match query.stages.first() {
        Some(Stage::Where(col, op, v)) if col == "type" && op == "=~" => v[0].to_lowercase(),
        _ => return Err("queries must start with where type =~ '...'".into()),
    };
    let mut rows = Vec::new();
    let worlds: Vec<String> = std::iter::once(s.subscription.clone())
        .chain(s.fleet.others.iter().map(|w| w.subscription.clone()))
        .filter(|w| subs.contains(&w.to_ascii_lowercase()))
        .collect();
    for sub in worlds {
        in_subscription(s, &sub, |s| rows.extend(resources(s, &kind)));
    }
    let mut out = run(query, rows)?;
    out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(out)
}

/// The resources of type `kind` of the swapped-in subscription as Resource Graph's
/// `Resources` has them.
fn resources(s: &ArmState, kind: &str) -> Vec<Value> {
    let common = |mut v: Value, kind: &str, rg: &str| {
        v["type"] = json!(kind.to_ascii_lowercase());
        v["resourceGroup"] = json!(rg.to_ascii_lowercase());
        v["subscriptionId"] = json!(s.subscription);
        if v.get("tags").is_none_or(Value::is_null) {
            v["tags"] = json!({});
        }
        v
    };
    let mut out = Vec::new();
    let (vms, exts) = (
        kind == "microsoft.compute/virtualmachines",
        kind.ends_with("/extensions"),
    );
    for vm in s
        .vms
        .iter()
        .filter(|v| v.scale_set.is_none() && (vms || exts && v.ade_extension))
    {
        let mut v = vm_json(s, vm, false);
        for ext in v["resources"].as_array().cloned().unwrap_or_default() {
            out.push(common(
                ext,
                "microsoft.compute/virtualmachines/extensions",
                &vm.resource_group,
            ));
        }
        v.as_object_mut().map(|o| o.remove("resources"));
        let code = vm.power_state.as_ref().map(|p| format!("PowerState/{p}"));
        v["properties"]["extended"] = json!({"instanceView": {
            "powerState": code.map(|c| json!({"code": c})),
            "hyperVGeneration": vm.hyperv_generation}});
        out.push(common(
            v,
            "microsoft.compute/virtualmachines",
            &vm.resource_group,
        ));
    }
    out.retain(|r| r["type"] == kind);
    for ss in s
        .scale_sets
        .iter()
        .filter(|_| kind.ends_with("virtualmachinescalesets"))
    {
        out.push(common(
            scale_set_json(s, ss),
            "microsoft.compute/virtualmachinescalesets",
            &ss.resource_group,
        ));
    }
    for d in s.disks.iter().filter(|_| kind == "microsoft.compute/disks") {
        out.push(common(
            disk_json(s, d),
            "microsoft.compute/disks",
            &d.resource_group,
        ));
    }
    out
}

// ---------------------------------------------------------------- the KQL we send

#[derive(Debug)]
enum Expr {
    Path(Vec<String>),
    ToString(Vec<String>),
}

#[derive(Debug)]
enum Stage {
    Where(String, String, Vec<String>),
    TagsContain(String),
    Extend(Vec<(String, Expr)>),
    Project(Vec<(String, Expr)>),
    OrderByIdAsc,
}

#[derive(Debug)]
struct Query {
    stages: Vec<Stage>,
}

/// Splits on `sep` outside string literals and parentheses.
fn split_top(text: &str, sep: char) -> Result<Vec<String>, String> {
    let mut parts = vec![String::new()];
    let (mut quote, mut escape, mut depth) = (false, false, 0i32);
    for c in text.chars() {
        if quote {
            parts.last_mut().unwrap().push(c);
            match (escape, c) {
                (true, _) => escape = false,
                (false, '\\') => escape = true,
                (false, '\'') => quote = false,
                _ => {}
            }
            continue;
        }
        match c {
            '\'' => quote = true,
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().unwrap().push(c);
    }
    if quote || depth != 0 {
        return Err(format!("unbalanced quotes or parentheses in {text:?}"));
    }
    Ok(parts.into_iter().map(|p| p.trim().to_string()).collect())
}

/// One whole KQL string literal with its escapes.
fn literal(text: &str) -> Result<String, String> {
    let inner = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .ok_or(format!("{text:?} is not a string literal"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(match chars.next() {
                Some('n') => '\n',
                Some('r') => '\r',
                Some('t') => '\t',
                Some(c @ ('\\' | '\'' | '"')) => c,
                other => return Err(format!("bad escape {other:?} in {text:?}")),
            }),
            '\'' => return Err(format!("unescaped quote inside {text:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn path(text: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = text.split('.').map(str::to_string).collect();
    if parts
        .iter()
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        Ok(parts)
    } else {
        Err(format!("{text:?} is not a column or property path"))
    }
}

fn expr(text: &str) -> Result<Expr, String> {
    match text
        .strip_prefix("tostring(")
        .and_then(|t| t.strip_suffix(')'))
    {
        Some(inner) => Ok(Expr::ToString(path(inner)?)),
        None => Ok(Expr::Path(path(text)?)),
    }
}

fn columns(text: &str) -> Result<Vec<(String, Expr)>, String> {
    split_top(text, ',')?
        .into_iter()
        .map(|item| match item.split_once(" = ") {
            Some((name, e)) => Ok((path(name.trim())?.join("."), expr(e.trim())?)),
            None => Ok((path(&item)?.join("."), expr(&item)?)),
        })
        .collect()
}

fn stage(text: &str) -> Result<Stage, String> {
    if text == "order by id asc" {
        return Ok(Stage::OrderByIdAsc);
    }
    if let Some(rest) = text.strip_prefix("where tostring(tags) contains ") {
        return Ok(Stage::TagsContain(literal(rest)?));
    }
    if let Some(rest) = text.strip_prefix("where ") {
        let (col, rest) = rest.split_once(' ').ok_or("where needs an operator")?;
        let (op, value) = rest.split_once(' ').ok_or("where needs a value")?;
        let values = match op {
            "=~" | "!~" => vec![literal(value)?],
            "in~" => {
                let inner = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or("in~ needs a list")?;
                split_top(inner, ',')?
                    .iter()
                    .map(|v| literal(v))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("operator {other} is not served")),
        };
        return Ok(Stage::Where(path(col)?.join("."), op.to_string(), values));
    }
    if let Some(rest) = text.strip_prefix("extend ") {
        return Ok(Stage::Extend(columns(rest)?));
    }
    if let Some(rest) = text.strip_prefix("project ") {
        return Ok(Stage::Project(columns(rest)?));
    }
    Err(format!("the stage {text:?} is not served"))
}

/// Whether the fake serves `query` (tests of its refusals).
pub fn serves(query: &str) -> Result<(), String> {
    parse(query).map(|_| ())
}

fn parse(query: &str) -> Result<Query, String> {
    let parts = split_top(query, '|')?;
    if parts.first().map(String::as_str) != Some("Resources") {
        return Err("only the Resources table is served".into());
    }
    let stages = parts[1..]
        .iter()
        .map(|p| stage(p))
        .collect::<Result<Vec<_>, _>>()?;
    if !matches!(stages.last(), Some(Stage::OrderByIdAsc)) {
        return Err("queries must end in order by id asc (paging needs it)".into());
    }
    Ok(Query { stages })
}

fn eval(row: &Value, e: &Expr) -> Value {
    let walk = |p: &[String]| p.iter().fold(row, |v, k| &v[k.as_str()]).clone();
    match e {
        Expr::Path(p) => walk(p),
        Expr::ToString(p) => json!(text_of(&walk(p))),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn run(q: &Query, rows: Vec<Value>) -> Result<Vec<Value>, String> {
    let mut rows = rows;
    for st in &q.stages {
        match st {
            Stage::Where(col, op, values) => rows.retain(|r| {
                let v = text_of(&r[col.as_str()]).to_lowercase();
                let hit = values.iter().any(|x| x.to_lowercase() == v);
                if op == "!~" { !hit } else { hit }
            }),
            Stage::TagsContain(needle) => rows.retain(|r| {
                text_of(&r["tags"])
                    .to_lowercase()
                    .contains(&needle.to_lowercase())
            }),
            Stage::Extend(cols) => {
                for r in &mut rows {
                    for (name, e) in cols {
                        r[name.as_str()] = eval(r, e);
                    }
                }
            }
            Stage::Project(cols) => {
                if !cols.iter().any(|(n, _)| n == "id") {
                    return Err("the fake pages only queries that project id".into());
                }
                rows = rows
                    .iter()
                    .map(|r| {
                        let mut out = serde_json::Map::new();
                        for (name, e) in cols {
                            out.insert(name.clone(), eval(r, e));
                        }
                        Value::Object(out)
                    })
                    .collect();
            }
            Stage::OrderByIdAsc => {}
        }
    }
    Ok(rows)
}
