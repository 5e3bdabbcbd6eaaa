//! The page frame (header, sign-out button) and its CSS and logo.

use super::*;

// ---------------------------------------------------------------------------------------
// Page frame

pub(super) const CSS: &str = r#"
:root{--bg:#f6f8fa;--card:#fff;--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--soft:#eaeef2;--link:#0969da;
--ok:#1a7f37;--ok-bg:#dafbe1;--ok-bar:#2da44e;--fail:#cf222e;--fail-bg:#ffebe9;--fail-bar:#e5534b;
--run:#9a6700;--run-bg:#fff8c5;--run-bar:#d4a72c;--cancel:#57606a;--cancel-bg:#eaeef2;--cancel-bar:#8c959f;
--skip:#8c959f;--skip-bg:#f6f8fa;--wait:#656d76;--wait-bg:#eaeef2;--log-bg:#0d1117;--log-fg:#e6edf3}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#161b22;--fg:#e6edf3;--muted:#8d96a0;--line:#30363d;
--soft:#21262d;--link:#4493f8;--ok:#3fb950;--ok-bg:#12261e;--fail:#f85149;--fail-bg:#2d1517;--run:#d29922;
--run-bg:#2e2208;--cancel:#8d96a0;--cancel-bg:#21262d;--skip:#6e7681;--skip-bg:#161b22;--wait:#8d96a0;--wait-bg:#21262d;
--log-bg:#010409}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",Helvetica,Arial,sans-serif}
a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace;font-size:12.5px}
.top{background:#24292f;color:#fff;padding:10px 20px;display:flex;align-items:center;gap:16px}
.top a{color:#fff;font-weight:600}.brand{font-size:16px;display:flex;align-items:center;gap:8px}
.brand svg{color:#58d68d}.top .sp{flex:1}.signout{margin:0 0 0 12px}.signout button{font-size:12px;padding:2px 8px}.top .live{font-size:12px;color:#afb8c1;display:flex;align-items:center;gap:6px}
.dot{width:8px;height:8px;border-radius:50%;background:#3fb950;display:inline-block}.dot.off{background:#8c959f}
main{max-width:1180px;margin:0 auto;padding:20px}
h1{font-size:20px;margin:0;font-weight:600;overflow-wrap:anywhere}h2{font-size:15px;margin:0 0 12px;font-weight:600}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px;margin-bottom:16px}
.muted{color:var(--muted)}.ic{flex:none;vertical-align:-3px}.spin{animation:spin 1s linear infinite}
@keyframes spin{to{transform:rotate(360deg)}}
.pill{display:inline-flex;align-items:center;gap:5px;padding:2px 10px 2px 8px;border-radius:999px;font-size:12.5px;font-weight:600;white-space:nowrap}
.pill.k-ok{color:var(--ok);background:var(--ok-bg)}.pill.k-fail{color:var(--fail);background:var(--fail-bg)}
.pill.k-run{color:var(--run);background:var(--run-bg)}.pill.k-cancel{color:var(--cancel);background:var(--cancel-bg)}
.pill.k-skip{color:var(--skip);background:var(--skip-bg);border:1px dashed var(--line)}.pill.k-wait{color:var(--wait);background:var(--wait-bg)}
/* runs list */
.runs{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden}
table.agents{width:100%;border-collapse:collapse}table.agents th,table.agents td{text-align:left;padding:8px 16px;border-top:1px solid var(--soft)}
table.agents th{border-top:0;background:var(--soft);color:var(--muted);font-size:12px;font-weight:600}
.run,.runs-head{display:grid;grid-template-columns:120px minmax(0,1fr) 90px 110px;gap:12px;align-items:center;padding:10px 16px;border-top:1px solid var(--soft);color:inherit}
.runs-head{border-top:0;background:var(--soft);color:var(--muted);font-size:12px;font-weight:600;padding:8px 16px}
.run:hover{background:var(--bg);text-decoration:none}.run .t{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.run .m{color:var(--muted);font-size:12.5px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.run .m code{background:var(--soft);padding:0 5px;border-radius:5px}.run .n{color:var(--muted);font-weight:400}
.run .d,.run .s{color:var(--muted);font-size:12.5px;text-align:right;white-space:nowrap}
.empty{padding:40px;text-align:center;color:var(--muted)}
@media (max-width:700px){main{padding:12px}.runs-head{display:none}
.run{grid-template-columns:minmax(0,1fr) auto;grid-template-areas:"t p" "m m" "s d";row-gap:4px;padding:12px}
.run .p{grid-area:p}.run .c{grid-area:t;min-width:0}.run .c .t{white-space:normal}.run .c .m{display:none}
.run .m2{display:block!important;grid-area:m}.run .d{grid-area:d}.run .s{grid-area:s;text-align:left}}
.run .m2{display:none}
/* run page */
.crumbs{margin-bottom:12px;color:var(--muted)}
.head{display:flex;flex-direction:column;gap:12px}.titlebar{display:flex;align-items:center;gap:12px;flex-wrap:wrap}
.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px 20px;margin:0}
.meta div{min-width:0}.meta dt{color:var(--muted);font-size:12px}.meta dd{margin:0;overflow-wrap:anywhere}
.reason{margin:0}.errtxt{background:var(--fail-bg);color:var(--fg);border:1px solid var(--fail);border-radius:8px;padding:12px;overflow:auto;max-height:320px;margin:0;white-space:pre-wrap}
.actions{display:flex;gap:8px;flex-wrap:wrap;align-items:center}
button{font:inherit;font-weight:600;font-size:13px;padding:6px 14px;border-radius:6px;border:1px solid var(--line);background:var(--soft);color:var(--fg);cursor:pointer}
button:hover{filter:brightness(.96)}button.danger{color:var(--fail)}button.primary{background:#1f883d;border-color:#1a7f37;color:#fff}
button:disabled{opacity:.5;cursor:default}.linkish{background:none;border:0;color:var(--link);font-weight:400;padding:6px}
#msg{font-size:13px}#msg.err{color:var(--fail)}#msg.ok{color:var(--ok)}
/* gantt */
.gantt{--lw:190px;position:relative}
.g-axis{position:relative;height:20px;margin-left:var(--lw);border-bottom:1px solid var(--line);font-size:11px;color:var(--muted)}
.g-axis span{position:absolute;bottom:3px;transform:translateX(-50%);white-space:nowrap}.g-axis span:first-child{transform:none}
.g-rows{position:relative}
.g-grid{position:absolute;top:0;bottom:0;left:var(--lw);right:0;pointer-events:none}
.g-grid i{position:absolute;top:0;bottom:0;border-left:1px dashed var(--soft)}
.g-row{display:grid;grid-template-columns:var(--lw) 1fr;align-items:center;min-height:34px;cursor:pointer;border-radius:6px;position:relative}
.g-row:hover{background:var(--bg)}.g-row.sel{background:var(--soft)}
.g-name{display:flex;align-items:center;gap:6px;padding:0 8px;min-width:0;font-weight:600}
.g-name .nm{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.g-name .ic{color:var(--c)}.g-track{position:relative;height:22px;overflow:hidden}
.g-bar{position:absolute;top:0;height:22px;border-radius:5px;background:var(--b);min-width:4px;display:flex;align-items:center;padding:0 6px;color:#fff;font-size:11.5px;font-weight:600;white-space:nowrap;overflow:visible}
.g-bar .lbl{position:absolute;left:calc(100% + 6px);color:var(--muted);font-weight:400}
.g-bar.inside{overflow:hidden}.g-bar.inside .lbl{position:static;color:#fff;font-weight:600;overflow:hidden;text-overflow:ellipsis}
.g-bar.before .lbl{left:auto;right:calc(100% + 6px)}
.g-note{position:absolute;left:0;top:2px;color:var(--muted);font-size:12px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:100%}
.k-ok.g-row{--b:var(--ok-bar);--c:var(--ok)}.k-fail.g-row{--b:var(--fail-bar);--c:var(--fail)}.k-cancel.g-row{--b:var(--cancel-bar);--c:var(--cancel)}
.k-run.g-row{--b:var(--run-bar);--c:var(--run)}.k-wait.g-row,.k-skip.g-row{--c:var(--skip)}
.g-row.k-run .g-bar{background:repeating-linear-gradient(-45deg,var(--run-bar) 0 8px,#e3b341 8px 16px);background-size:22px 22px;animation:stripes 1s linear infinite}
@keyframes stripes{to{background-position:22px 0}}
.g-row.k-skip .nm,.g-row.k-wait .nm{color:var(--muted);font-weight:500}
.stage{font-size:11px;color:var(--muted);font-weight:400;border:1px solid var(--line);border-radius:4px;padding:0 4px}
.skiph{font-size:13px;margin:16px 0 4px;color:var(--muted);font-weight:600}
.skips{margin:0;padding:0;list-style:none;border-top:1px solid var(--soft)}
.skips li{padding:6px 0;color:var(--skip);border-bottom:1px solid var(--soft);display:flex;gap:8px;align-items:baseline;flex-wrap:wrap}
.skips b{font-weight:600;color:var(--fg)}
table.arts{width:100%;border-collapse:collapse}table.arts td,table.arts th{text-align:left;padding:6px 8px;border-bottom:1px solid var(--soft)}
table.arts th{font-size:12px;color:var(--muted);font-weight:600}table.arts td.sz{text-align:right;color:var(--muted);white-space:nowrap}
table.arts td.f{overflow-wrap:anywhere}
.loghead{display:flex;align-items:center;gap:10px;flex-wrap:wrap;margin-bottom:10px}.loghead h2{margin:0}
.loghead .sp{flex:1}.loghead label{font-size:12.5px;color:var(--muted);display:flex;gap:4px;align-items:center}
pre.log{background:var(--log-bg);color:var(--log-fg);margin:0;padding:12px 14px;border-radius:8px;overflow:auto;max-height:70vh;min-height:120px;line-height:1.5;white-space:pre-wrap;overflow-wrap:anywhere}
pre.log .b{font-weight:700}
.c30{color:#6e7681}.c31{color:#ff7b72}.c32{color:#3fb950}.c33{color:#d29922}.c34{color:#58a6ff}.c35{color:#bc8cff}.c36{color:#39c5cf}.c37{color:#b1bac4}
.c90{color:#8b949e}.c91{color:#ffa198}.c92{color:#56d364}.c93{color:#e3b341}.c94{color:#79c0ff}.c95{color:#d2a8ff}.c96{color:#56d4dd}.c97{color:#fff}
@media (max-width:700px){.gantt{--lw:118px}.g-bar{font-size:10.5px}.card{padding:12px}.meta{grid-template-columns:1fr 1fr}
.g-name .stage{display:none}h1{font-size:17px}}
"#;

pub(super) const LOGO: &str = "<svg viewBox=\"0 0 16 16\" width=\"18\" height=\"18\" aria-hidden=\"true\" fill=\"currentColor\"><circle cx=\"3\" cy=\"8\" r=\"2.2\"/><circle cx=\"13\" cy=\"3.5\" r=\"2.2\"/><circle cx=\"13\" cy=\"12.5\" r=\"2.2\"/><path d=\"M3 8 13 3.5M3 8l10 4.5\" stroke=\"currentColor\" stroke-width=\"1.4\"/></svg>";

/// A whole page; `signed_in`: a private server's page, with a button that ends the session.
pub(super) fn page(title: &str, body: &str, script: &str, signed_in: bool) -> String {
    // A form (POST): a link or an image elsewhere cannot sign anyone out.
    let signout = if signed_in {
        "<form method=\"post\" action=\"/logout\" class=\"signout\"><button type=\"submit\">Sign out</button></form>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\"><title>{}</title><style>{CSS}</style></head>\
         <body><header class=\"top\"><a class=\"brand\" href=\"/\">{LOGO}orch</a><a href=\"/\">Runs</a><a href=\"/environments\">Environments</a><a href=\"/dora\">Delivery</a><a href=\"/agents\">Agents</a><span class=\"sp\"></span>\
         <span class=\"live\" id=\"live\"><span class=\"dot\"></span>live</span>{signout}</header><main>{body}</main>\
         <script>{script}</script></body></html>",
        esc(title)
    )
}
