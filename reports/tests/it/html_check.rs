//! A strict well-formedness check of the generated HTML on top of html5gum's WHATWG tokenizer:
//! no tokenizer errors, a doctype first, every non-void element closed in order, unique ids, no
//! scripts and no external resources.

use std::collections::HashSet;

use html5gum::{DefaultEmitter, Token, Tokenizer};

/// Elements that never have an end tag.
const VOID: [&str; 13] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

/// What the check found.
#[derive(Debug, Default)]
pub struct HtmlSummary {
    /// Problems; empty when the page is well formed.
    pub problems: Vec<String>,
    /// `<svg>` elements.
    pub svg_count: usize,
    /// Visible text (concatenated string tokens outside `<style>`).
    pub text: String,
}

/// Checks `html`.
pub fn check(html: &str) -> HtmlSummary {
    let mut emitter = DefaultEmitter::default();
    emitter.naively_switch_states(true);
    let mut out = HtmlSummary::default();
    let mut stack: Vec<String> = Vec::new();
    let mut ids: HashSet<String> = HashSet::new();
    let mut seen_doctype = false;
    let mut first = true;
    for token in Tokenizer::new_with_emitter(html, emitter) {
        let Ok(token) = token;
        match token {
            Token::Doctype(d) => {
                if !first {
                    out.problems.push("doctype is not the first token".into());
                }
                if String::from_utf8_lossy(&d.name) != "html" {
                    out.problems.push("doctype is not html".into());
                }
                seen_doctype = true;
            }
            Token::StartTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).to_lowercase();
                if name == "svg" {
                    out.svg_count += 1;
                }
                if name == "script" || name == "iframe" || name == "object" {
                    out.problems.push(format!("<{name}> element"));
                }
                for (k, v) in &tag.attributes {
                    let key = String::from_utf8_lossy(k).to_lowercase();
                    let value = String::from_utf8_lossy(v).to_string();
                    if key == "id" && !ids.insert(value.clone()) {
                        out.problems.push(format!("duplicate id {value:?}"));
                    }
                    if key.starts_with("on") {
                        out.problems
                            .push(format!("event handler {key} on <{name}>"));
                    }
                    let external = value.starts_with("http:")
                        || value.starts_with("https:")
                        || value.starts_with("//");
                    if (key == "src" || key == "href")
                        && (external || value.starts_with("javascript:"))
                    {
                        out.problems
                            .push(format!("external resource {key}={value:?} on <{name}>"));
                    }
                }
                if !tag.self_closing && !VOID.contains(&name.as_str()) {
                    stack.push(name);
                }
            }
            Token::EndTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).to_lowercase();
                match stack.pop() {
                    Some(open) if open == name => {}
                    Some(open) => {
                        out.problems.push(format!("</{name}> closes <{open}>"));
                        stack.push(open);
                    }
                    None => out
                        .problems
                        .push(format!("</{name}> without an open element")),
                }
            }
            Token::String(s) => {
                if stack.last().is_none_or(|t| t != "style") {
                    out.text.push_str(&String::from_utf8_lossy(&s));
                }
            }
            Token::Comment(_) => {}
            Token::Error(e) => out.problems.push(format!("tokenizer error: {}", *e)),
        }
        first = false;
    }
    if !seen_doctype {
        out.problems.push("no doctype".into());
    }
    if !stack.is_empty() {
        out.problems.push(format!("unclosed elements: {stack:?}"));
    }
    out
}

#[test]
fn the_checker_catches_broken_markup() {
    let bad = check("<!DOCTYPE html><html><body><div><p>x</div></body><script></script></html>");
    assert!(
        bad.problems.iter().any(|p| p.contains("</div> closes <p>")),
        "{:?}",
        bad.problems
    );
    assert!(bad.problems.iter().any(|p| p.contains("<script>")));
    let dup = check(
        "<!DOCTYPE html><html><a id=\"x\"></a><b id=\"x\"></b><img src=\"https://x/y.png\"></html>",
    );
    assert!(dup.problems.iter().any(|p| p.contains("duplicate id")));
    assert!(dup.problems.iter().any(|p| p.contains("external resource")));
    let good = check(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>a < b {}</style></head><body><svg><rect/></svg><br></body></html>",
    );
    assert!(good.problems.is_empty(), "{:?}", good.problems);
    assert_eq!(good.svg_count, 1);
}
