//! The console's pages, rendered on the server: readable as they are,
//! without JavaScript. The script finds what it updates by `id` and
//! `data-field` attributes.

use std::fmt::Write as _;

use super::model::{Overview, PipelineDetail, PipelineLive, TenantView};
use crate::admin::AdminError;

/// `text` with HTML's special characters escaped (for text and for
/// double- or single-quoted attribute values).
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment with everything but unreserved characters
/// percent-encoded.
pub(super) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Which tab of the navigation a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tab {
    Pipelines,
    Tenants,
    Cluster,
}

/// The page around `main`: head, navigation, the live-update status line.
fn page(title: &str, tab: Tab, data: &str, main: &str) -> String {
    let link = |href: &str, label: &str, this: Tab| {
        let current = if this == tab {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · plumber console</title>\n\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\n\
         <script src=\"/console/assets/console.js\" defer></script>\n</head>\n\
         <body{data}>\n<a class=\"skip\" href=\"#main\">Skip to content</a>\n\
         <header><span class=\"brand\">plumber</span>\
         <nav aria-label=\"Console\">{} {} {} <a href=\"/metrics\">Metrics</a></nav></header>\n\
         <main id=\"main\">\n<h1>{title}</h1>\n{main}</main>\n\
         <footer><p id=\"live\" role=\"status\" aria-live=\"polite\">\
         As loaded; live updates need JavaScript.</p></footer>\n</body>\n</html>\n",
        link("/console", "Pipelines", Tab::Pipelines),
        link("/console/tenants", "Tenants", Tab::Tenants),
        link("/console/cluster", "Cluster", Tab::Cluster),
        title = escape(title),
    )
}

/// Milliseconds as a short duration: `850 ms`, `12.3 s`, `4 min 5 s`,
/// `2 h 3 min`, `3 d 4 h`.
pub(super) fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Microseconds as milliseconds with one decimal: `12.3 ms`.
pub(super) fn micros_ms(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub(super) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn opt<T>(value: Option<T>, f: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "–".to_owned(), f)
}

fn checkpoint_cell(live: &PipelineLive) -> String {
    match (live.last_checkpoint_epoch, live.last_checkpoint_age_ms) {
        (Some(epoch), Some(age)) => format!("#{epoch}, {} ago", duration_ms(age)),
        _ => "none yet".to_owned(),
    }
}

fn state_badge(state: &str) -> String {
    format!("<span class=\"state state-{0}\">{0}</span>", escape(state))
}

/// One row of the overview table.
fn overview_row(out: &mut String, live: &PipelineLive) {
    let name = escape(&live.name);
    let _ = writeln!(
        out,
        "<tr data-pipeline=\"{name}\">\
         <th scope=\"row\"><a href=\"/console/pipelines/{href}\">{name}</a></th>\
         <td data-field=\"tenant\">{tenant}</td>\
         <td data-field=\"state\">{state}</td>\
         <td data-field=\"uptime\">{uptime}</td>\
         <td class=\"num\" data-field=\"rate_in\">–</td>\
         <td class=\"num\" data-field=\"rate_out\">–</td>\
         <td class=\"num\" data-field=\"events_in\">{events_in}</td>\
         <td class=\"num\" data-field=\"events_out\">{events_out}</td>\
         <td class=\"num\" data-field=\"lag\">{lag}</td>\
         <td data-field=\"checkpoint\">{checkpoint}</td>\
         <td class=\"num\" data-field=\"checkpoint_duration\">{duration}</td>\
         <td class=\"num\" data-field=\"errors\">{errors}</td>\
         <td class=\"spark\" data-field=\"spark\" aria-hidden=\"true\"></td></tr>",
        href = path_segment(&live.name),
        tenant = escape(&live.tenant),
        state = state_badge(&live.state),
        uptime = opt(live.uptime_ms, duration_ms),
        events_in = live.events_in,
        events_out = live.events_out,
        lag = opt(live.lag, |lag| lag.to_string()),
        checkpoint = checkpoint_cell(live),
        duration = opt(live.last_checkpoint_micros, micros_ms),
        errors = live.errors,
    );
    if let Some(error) = &live.error {
        let _ = writeln!(
            out,
            "<tr class=\"failure\"><td colspan=\"13\">{name} failed: {}</td></tr>",
            escape(error)
        );
    }
}

/// The overview page.
pub(super) fn overview(overview: &Overview) -> String {
    let mut main = String::new();
    let _ = writeln!(
        main,
        "<p class=\"summary\" id=\"summary\">{} pipelines, {} running.</p>",
        overview.pipelines.len(),
        overview
            .pipelines
            .iter()
            .filter(|p| p.state == "running")
            .count()
    );
    main.push_str(
        "<div class=\"scroll\"><table id=\"pipelines\">\n<caption>Pipelines; \
         rates are events per second since the previous update; the trend \
         shows events in per second over the last minutes.</caption>\n<thead><tr>\
         <th scope=\"col\">Pipeline</th><th scope=\"col\">Tenant</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Uptime</th>\
         <th scope=\"col\">In/s</th><th scope=\"col\">Out/s</th>\
         <th scope=\"col\">Events in</th><th scope=\"col\">Events out</th>\
         <th scope=\"col\">Lag</th><th scope=\"col\">Last checkpoint</th>\
         <th scope=\"col\">Its pause</th><th scope=\"col\">Errors</th>\
         <th scope=\"col\">Trend</th></tr></thead>\n<tbody>\n",
    );
    if overview.pipelines.is_empty() {
        main.push_str("<tr><td colspan=\"13\">No pipeline runs here.</td></tr>\n");
    }
    for live in &overview.pipelines {
        overview_row(&mut main, live);
    }
    main.push_str("</tbody></table></div>\n");
    page(
        "Pipelines",
        Tab::Pipelines,
        &format!(" data-page=\"overview\" data-at=\"{}\"", overview.at_ms),
        &main,
    )
}

/// The pipeline page.
pub(super) fn pipeline(detail: &PipelineDetail, now_ms: u64, token_required: bool) -> String {
    let live = &detail.live;
    let mut main = String::new();
    let _ = writeln!(
        main,
        "<dl class=\"facts\" id=\"facts\">\
         <div><dt>Tenant</dt><dd>{tenant}</dd></div>\
         <div><dt>State</dt><dd data-field=\"state\">{state}</dd></div>\
         <div><dt>Uptime</dt><dd data-field=\"uptime\">{uptime}</dd></div>\
         <div><dt>Events in</dt><dd data-field=\"events_in\">{events_in}</dd></div>\
         <div><dt>Events out</dt><dd data-field=\"events_out\">{events_out}</dd></div>\
         <div><dt>Lag</dt><dd data-field=\"lag\">{lag}</dd></div>\
         <div><dt>Last checkpoint</dt><dd data-field=\"checkpoint\">{checkpoint}</dd></div>\
         <div><dt>Errors</dt><dd data-field=\"errors\">{errors}</dd></div></dl>",
        tenant = escape(&live.tenant),
        state = state_badge(&live.state),
        uptime = opt(live.uptime_ms, duration_ms),
        events_in = live.events_in,
        events_out = live.events_out,
        lag = opt(live.lag, |lag| lag.to_string()),
        checkpoint = checkpoint_cell(live),
        errors = live.errors,
    );
    if let Some(error) = &live.error {
        let _ = writeln!(main, "<p class=\"failure\">Failed: {}</p>", escape(error));
    }

    // The graph: source, each stage, sink.
    main.push_str(
        "<section aria-labelledby=\"graph-title\"><h2 id=\"graph-title\">Graph</h2>\n\
         <ol class=\"graph\" id=\"graph\">\n<li class=\"node edge-node\"><span class=\"node-name\">source</span>\
         <span class=\"node-kind\">reads</span></li>\n",
    );
    for stage in &detail.stages {
        let _ = writeln!(
            main,
            "<li class=\"node node-{kind}\" data-stage=\"{name}\"><span class=\"node-name\">{name}</span>\
             <span class=\"node-kind\">{kind}</span>{from}\
             <span>in <b data-field=\"events_in\">{events_in}</b></span>\
             <span>out <b data-field=\"events_out\">{events_out}</b></span>\
             <span>rate <b data-field=\"rate\">–</b>/s</span>\
             <span>buffered <b data-field=\"buffered\">{buffered}</b></span>\
             <span>errors <b data-field=\"errors\">{errors}</b></span>\
             <span>dead-lettered <b data-field=\"dead_lettered\">{dead}</b></span>\
             <span>log lines dropped <b data-field=\"log_dropped\">{log_dropped}</b></span></li>",
            kind = escape(&stage.kind),
            name = escape(&stage.name),
            from = if stage.inputs.is_empty() {
                String::new()
            } else {
                format!(
                    "<span class=\"node-from\">from {}</span>",
                    escape(&stage.inputs.join(", "))
                )
            },
            events_in = stage.events_in,
            events_out = stage.events_out,
            buffered = stage.buffered,
            errors = stage.errors,
            dead = stage.dead_lettered,
            log_dropped = stage.log_dropped,
        );
    }
    main.push_str(
        "<li class=\"node edge-node\"><span class=\"node-name\">sink</span>\
         <span class=\"node-kind\">writes</span></li>\n</ol></section>\n",
    );

    // Actions.
    let name = escape(&live.name);
    main.push_str(
        "<section aria-labelledby=\"actions-title\" class=\"actions\">\
         <h2 id=\"actions-title\">Actions</h2>\n\
         <noscript><p>The actions need JavaScript: they send the admin API's \
         requests, with the token in a header.</p></noscript>\n",
    );
    if token_required {
        main.push_str(
            "<p><label for=\"token\">Admin token</label> \
             <input id=\"token\" type=\"password\" autocomplete=\"off\" spellcheck=\"false\"> \
             <span class=\"hint\">kept in this tab only</span></p>\n",
        );
    }
    let _ = writeln!(
        main,
        "<p class=\"buttons\"><button type=\"button\" id=\"checkpoint\" data-pipeline=\"{name}\">\
         Checkpoint now</button> \
         <button type=\"button\" id=\"stop\" class=\"danger\" data-pipeline=\"{name}\">\
         Drain and stop</button></p>"
    );
    if !detail.pipes.is_empty() {
        main.push_str(
            "<fieldset><legend>Replace a pipe's module</legend>\
             <p><label for=\"upload-pipe\">Pipe</label> <select id=\"upload-pipe\">",
        );
        for pipe in &detail.pipes {
            let _ = write!(main, "<option>{}</option>", escape(&pipe.name));
        }
        main.push_str(
            "</select> <label for=\"upload-file\">Component (.wasm)</label> \
             <input id=\"upload-file\" type=\"file\" accept=\".wasm,application/wasm\"> \
             <button type=\"button\" id=\"upload\">Upload module</button></p></fieldset>\n",
        );
    }
    main.push_str("<p id=\"action-result\" role=\"status\" aria-live=\"polite\"></p></section>\n");

    // Checkpoint history, newest first.
    main.push_str(
        "<section aria-labelledby=\"checkpoints-title\"><h2 id=\"checkpoints-title\">\
         Checkpoints</h2>\n<div class=\"scroll\"><table id=\"checkpoints\"><thead><tr>\
         <th scope=\"col\">Epoch</th><th scope=\"col\">Committed</th>\
         <th scope=\"col\">Pause</th><th scope=\"col\">Commit</th>\
         <th scope=\"col\">Keys written</th></tr></thead><tbody>\n",
    );
    if detail.checkpoints.is_empty() {
        main.push_str("<tr><td colspan=\"5\">None committed in this run yet.</td></tr>\n");
    }
    for entry in detail.checkpoints.iter().rev() {
        let _ = writeln!(
            main,
            "<tr data-epoch=\"{epoch}\"><td class=\"num\">{epoch}</td><td>{at} \
             <span class=\"hint\">({ago} ago)</span></td><td class=\"num\">{pause}</td>\
             <td class=\"num\">{commit}</td><td class=\"num\">{keys}</td></tr>",
            epoch = entry.epoch,
            at = utc(entry.at_ms),
            ago = duration_ms(now_ms.saturating_sub(entry.at_ms)),
            pause = micros_ms(entry.pause_micros),
            commit = micros_ms(entry.commit_micros),
            keys = entry.keys,
        );
    }
    main.push_str("</tbody></table></div></section>\n");

    // Modules and their swaps.
    main.push_str(
        "<section aria-labelledby=\"modules-title\"><h2 id=\"modules-title\">Modules</h2>\n",
    );
    if detail.pipes.is_empty() {
        main.push_str("<p>No WASM pipe.</p>\n");
    }
    for pipe in &detail.pipes {
        let _ = write!(
            main,
            "<h3>{name} <span class=\"hint\">version <code data-pipe-version=\"{name}\">{version}</code>, \
             from <code>{module}</code></span></h3>\n\
             <div class=\"scroll\"><table class=\"swaps\" data-pipe=\"{name}\"><thead><tr>\
             <th scope=\"col\">When</th><th scope=\"col\">From</th><th scope=\"col\">To</th>\
             <th scope=\"col\">Outcome</th></tr></thead><tbody>\n",
            name = escape(&pipe.name),
            version = escape(&pipe.version),
            module = escape(&pipe.module),
        );
        if pipe.swaps.is_empty() {
            main.push_str("<tr><td colspan=\"4\">Not swapped in this run.</td></tr>\n");
        }
        for swap in pipe.swaps.iter().rev() {
            let outcome = match &swap.refused {
                Some(reason) => {
                    format!("<span class=\"refused\">refused: {}</span>", escape(reason))
                }
                None => match &swap.migration {
                    Some(migration) => format!("switched in; {}", escape(migration)),
                    None => "switched in".to_owned(),
                },
            };
            let _ = writeln!(
                main,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{outcome}</td></tr>",
                utc(swap.at_ms),
                escape(&swap.from),
                escape(swap.to.as_deref().unwrap_or("–")),
            );
        }
        main.push_str("</tbody></table></div>\n");
    }
    main.push_str("</section>\n");

    // Dead letters, newest first.
    main.push_str(
        "<section aria-labelledby=\"dead-title\"><h2 id=\"dead-title\">Dead letters</h2>\n\
         <div class=\"scroll\"><table id=\"dead-letters\"><thead><tr>\
         <th scope=\"col\">When</th><th scope=\"col\">Key</th><th scope=\"col\">Value</th>\
         <th scope=\"col\">Headers</th></tr></thead><tbody>\n",
    );
    if detail.dead_letters.is_empty() {
        main.push_str("<tr><td colspan=\"4\">None in this run.</td></tr>\n");
    }
    for letter in detail.dead_letters.iter().rev() {
        let headers: String = letter
            .headers
            .iter()
            .map(|(name, value)| {
                format!("<li><code>{}</code>: {}</li>", escape(name), escape(value))
            })
            .collect();
        let _ = writeln!(
            main,
            "<tr class=\"letter\"><td>{}</td><td><code>{}</code></td><td class=\"wrap\"><code>{}</code></td>\
             <td class=\"wrap\"><ul class=\"headers\">{headers}</ul></td></tr>",
            utc(letter.at_ms),
            escape(letter.key.as_deref().unwrap_or("–")),
            escape(&letter.value),
        );
    }
    main.push_str("</tbody></table></div></section>\n");

    // Guest log lines, newest first.
    main.push_str(
        "<section aria-labelledby=\"log-title\"><h2 id=\"log-title\">Guest log</h2>\n\
         <div class=\"scroll\"><table id=\"guest-log\"><thead><tr>\
         <th scope=\"col\">When</th><th scope=\"col\">Pipe</th><th scope=\"col\">Level or stream</th>\
         <th scope=\"col\">Line</th></tr></thead><tbody>\n",
    );
    if detail.log.is_empty() {
        main.push_str("<tr><td colspan=\"4\">No line in this run.</td></tr>\n");
    }
    for line in detail.log.iter().rev() {
        let _ = writeln!(
            main,
            "<tr class=\"line\"><td>{}</td><td>{}</td><td>{}</td><td class=\"wrap\"><code>{}</code></td></tr>",
            utc(line.at_ms),
            escape(&line.step),
            escape(&line.source),
            escape(&line.text),
        );
    }
    main.push_str("</tbody></table></div></section>\n");
    page(
        &live.name,
        Tab::Pipelines,
        &format!(" data-page=\"pipeline\" data-pipeline=\"{name}\""),
        &main,
    )
}

fn quota<T: std::fmt::Display>(used: String, max: Option<T>) -> String {
    match max {
        Some(max) => format!("{used} of {max}"),
        None => format!("{used} <span class=\"hint\">(no quota)</span>"),
    }
}

/// The tenants page.
pub(super) fn tenants(tenants: &[TenantView]) -> String {
    let mut main = String::from(
        "<div class=\"scroll\"><table id=\"tenants\"><thead><tr>\
         <th scope=\"col\">Tenant</th><th scope=\"col\">Pipelines</th>\
         <th scope=\"col\">State bytes</th><th scope=\"col\">Events in</th>\
         <th scope=\"col\">Events out</th><th scope=\"col\">Errors</th></tr></thead><tbody>\n",
    );
    if tenants.is_empty() {
        main.push_str("<tr><td colspan=\"6\">No tenant known here.</td></tr>\n");
    }
    for tenant in tenants {
        let _ = writeln!(
            main,
            "<tr data-tenant=\"{name}\"><th scope=\"row\">{name}</th>\
             <td data-field=\"pipelines\">{pipelines}</td><td data-field=\"state_bytes\">{state}</td>\
             <td class=\"num\" data-field=\"events_in\">{events_in}</td>\
             <td class=\"num\" data-field=\"events_out\">{events_out}</td>\
             <td class=\"num\" data-field=\"errors\">{errors}</td></tr>",
            name = escape(&tenant.tenant),
            pipelines = quota(tenant.pipelines.to_string(), tenant.max_pipelines),
            state = quota(tenant.state_bytes.to_string(), tenant.max_state_bytes),
            events_in = tenant.events_in,
            events_out = tenant.events_out,
            errors = tenant.errors,
        );
    }
    main.push_str("</tbody></table></div>\n");
    page("Tenants", Tab::Tenants, " data-page=\"tenants\"", &main)
}

/// The cluster page: the worker's view as it reports it, or why there is
/// none.
pub(super) fn cluster(view: &Result<serde_json::Value, AdminError>) -> String {
    let main = match view {
        Ok(view) => {
            let mut main = String::new();
            if let Some(object) = view.as_object() {
                main.push_str("<dl class=\"facts\">");
                for (key, value) in object.iter().filter(|(_, v)| !v.is_array()) {
                    let _ = write!(
                        main,
                        "<div><dt>{}</dt><dd>{}</dd></div>",
                        escape(key),
                        escape(&plain(value))
                    );
                }
                main.push_str("</dl>\n");
                for (key, value) in object.iter().filter(|(_, v)| v.is_array()) {
                    let _ = writeln!(main, "<h2>{}</h2>", escape(key));
                    main.push_str(&array_table(value.as_array().map_or(&[], Vec::as_slice)));
                }
            } else {
                let _ = write!(main, "<pre>{}</pre>", escape(&view.to_string()));
            }
            main
        }
        Err(AdminError::NotClustered) => {
            "<p>This process is not a cluster worker: its pipelines run here alone. \
             A worker started by <code>plumber worker</code> shows its members, \
             partitions and their owners here.</p>\n"
                .to_owned()
        }
        Err(error) => format!(
            "<p class=\"failure\">The cluster view is not available: {}</p>\n",
            escape(&error.to_string())
        ),
    };
    page("Cluster", Tab::Cluster, " data-page=\"cluster\"", &main)
}

/// A JSON value as plain text (strings without their quotes).
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => "–".to_owned(),
        other => other.to_string(),
    }
}

/// A table of an array of objects (columns: the keys of its first
/// object), or a list of its values.
fn array_table(items: &[serde_json::Value]) -> String {
    if items.is_empty() {
        return "<p>None.</p>\n".to_owned();
    }
    let mut columns: Vec<&String> = items
        .iter()
        .find_map(serde_json::Value::as_object)
        .map(|first| first.keys().collect())
        .unwrap_or_default();
    // What a row is about first; the rest as they come (by name).
    const FIRST: [&str; 4] = ["partition", "task", "owner", "worker"];
    columns.sort_by_key(|column| {
        FIRST
            .iter()
            .position(|first| first == column)
            .unwrap_or(FIRST.len())
    });
    if columns.is_empty() {
        let mut list = String::from("<ul>");
        for item in items {
            let _ = write!(list, "<li>{}</li>", escape(&plain(item)));
        }
        list.push_str("</ul>\n");
        return list;
    }
    let mut table = String::from("<div class=\"scroll\"><table><thead><tr>");
    for column in &columns {
        let _ = write!(
            table,
            "<th scope=\"col\">{}</th>",
            escape(&column.replace('_', " "))
        );
    }
    table.push_str("</tr></thead><tbody>\n");
    for item in items {
        table.push_str("<tr>");
        for column in &columns {
            let cell = item.get(column.as_str()).map_or_else(String::new, plain);
            let _ = write!(table, "<td>{}</td>", escape(&cell));
        }
        table.push_str("</tr>\n");
    }
    table.push_str("</tbody></table></div>\n");
    table
}

/// A page for what does not exist.
pub(super) fn not_found(message: &str) -> String {
    page(
        "Not found",
        Tab::Pipelines,
        "",
        &format!(
            "<p>{}</p><p><a href=\"/console\">All pipelines</a></p>\n",
            escape(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(path_segment("a b/ü"), "a%20b%2F%C3%BC");
    }

    /// A worker's view (the shape `plumber worker` answers `GET /cluster`
    /// with): its facts, and a table of its partitions with their lag.
    #[test]
    fn the_cluster_page_shows_a_workers_partitions() {
        let view = serde_json::json!({
            "worker": "w1",
            "pipeline": "orders",
            "members": 2,
            "partitions_owned": 2,
            "partitions": [
                {"partition": 0, "task": "orders-p0", "revision": 7, "fence": 3,
                 "committed": 12, "lag": 40, "last_commit_age_ms": 150},
                {"partition": 3, "task": "orders-p3", "revision": 9, "fence": 1,
                 "committed": null, "lag": null, "last_commit_age_ms": null},
            ],
        });
        let html = cluster(&Ok(view));
        for fact in [
            "<dt>worker</dt><dd>w1</dd>",
            "<dt>members</dt><dd>2</dd>",
            "<dt>partitions_owned</dt><dd>2</dd>",
        ] {
            assert!(html.contains(fact), "{fact} in {html}");
        }
        assert!(html.contains("<h2>partitions</h2>"), "{html}");
        // The partition first, then the rest by name.
        assert!(
            html.contains(
                "<th scope=\"col\">partition</th><th scope=\"col\">task</th>\
                 <th scope=\"col\">committed</th><th scope=\"col\">fence</th>\
                 <th scope=\"col\">lag</th><th scope=\"col\">last commit age ms</th>\
                 <th scope=\"col\">revision</th>"
            ),
            "{html}"
        );
        for row in [
            "<td>0</td><td>orders-p0</td><td>12</td><td>3</td><td>40</td><td>150</td><td>7</td>",
            "<td>3</td><td>orders-p3</td><td>–</td><td>1</td><td>–</td><td>–</td><td>9</td>",
        ] {
            assert!(html.contains(row), "{row} in {html}");
        }
        let not_clustered = cluster(&Err(AdminError::NotClustered));
        assert!(not_clustered.contains("not a cluster worker"));
        let down = cluster(&Err(AdminError::Unavailable("<no nats>".into())));
        assert!(down.contains("&lt;no nats&gt;"), "{down}");
    }

    #[test]
    fn durations_and_times_read_plainly() {
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(12_345), "12.3 s");
        assert_eq!(duration_ms(245_000), "4 min 5 s");
        assert_eq!(duration_ms(7_380_000), "2 h 3 min");
        assert_eq!(duration_ms(3 * 86_400_000 + 4 * 3_600_000), "3 d 4 h");
        assert_eq!(micros_ms(12_345), "12.3 ms");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2000-02-29 12:34:56 UTC: a leap day (`date -u -d @951827696`).
        assert_eq!(utc(951_827_696_000), "2000-02-29 12:34:56 UTC");
        // 2026-12-07 09:00:00 UTC.
        assert_eq!(utc(1_796_634_000_000), "2026-12-07 09:00:00 UTC");
    }
}
