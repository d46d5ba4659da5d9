//! The secret-scanning expression in docs/secret-scanning.md, as written there,
//! matches every freshly generated key and none of the near misses.

use keygate::keys::{ApiKey, Format};
use regex::Regex;

const DOC: &str = include_str!("../docs/secret-scanning.md");

/// The expression in the doc's ```regex block.
fn documented() -> String {
    let start = DOC.find("```regex\n").expect("a ```regex block") + "```regex\n".len();
    DOC[start..]
        .lines()
        .next()
        .expect("the expression")
        .trim()
        .to_owned()
}

#[test]
fn the_documented_expression_matches_fresh_keys_and_no_near_miss() {
    let text = documented();
    // The gitleaks and trufflehog rules carry the same expression.
    assert!(DOC.contains(&format!("regex = '''{text}'''")), "gitleaks rule");
    assert!(DOC.contains(&format!("key: '{text}'")), "trufflehog rule");
    let re = Regex::new(&text).expect("valid expression");

    let mut keys = Vec::new();
    for env in ["live", "test"] {
        let format = Format::new("kg", env).expect("format");
        for _ in 0..500 {
            keys.push(ApiKey::generate(&format, env).expect("key").expose().to_owned());
        }
    }
    let matched = keys
        .iter()
        .filter(|k| re.find(k).map(|m| m.as_str()) == Some(k.as_str()))
        .count();
    // Embedded in text the way leaks are: in .env files, JSON, URLs, shell history.
    let key = &keys[0];
    for context in [
        format!("KEYGATE_KEY={key}\n"),
        format!("{{\"api_key\": \"{key}\"}}"),
        format!("https://api.example.com/v1/x?api_key={key}&page=2"),
        format!("curl -H 'Authorization: Bearer {key}' ..."),
    ] {
        assert_eq!(
            re.find(&context).map(|m| m.as_str()),
            Some(key.as_str()),
            "{context}"
        );
    }

    let body = &key["kg_live_".len()..];
    let near_misses = [
        format!("kgx_live_{body}"),                         // another prefix
        format!("xkg_live_{body}"),                         // inside a longer word
        format!("kg_live_{}", &body[1..]),                  // 37 characters
        format!("kg_live_{body}Z"),                         // 39 characters
        format!("kg_live_{}-{}", &body[..10], &body[11..]), // a character outside base62
        format!("kg_LIVE_{body}"),                          // environment in capitals
        format!("kg__{body}"),                              // no environment
        format!("kg_{body}"),                               // no environment at all
        format!("KG_live_{body}"),                          // prefix in capitals
        format!("kg_live_{}", &body[..32]),                 // the random part without checksum
    ];
    let mut missed = Vec::new();
    for miss in &near_misses {
        if re.is_match(miss) {
            missed.push(miss.clone());
        }
    }
    println!("expression: {text}");
    println!(
        "fresh keys matched: {matched} of {} (500 live, 500 test)",
        keys.len()
    );
    println!("near misses matched: {} of {}", missed.len(), near_misses.len());
    assert_eq!(matched, keys.len(), "every fresh key matches whole");
    assert!(missed.is_empty(), "near misses matched: {missed:?}");
}
