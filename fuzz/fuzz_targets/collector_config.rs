//! The collector's TOML configuration file (`--config`), as `Config::load` reads it: UTF-8 text
//! through `Config::from_toml` (`deny_unknown_fields` everywhere, durations through
//! `parse_duration` or whole seconds), then `Config::validate`.
//!
//! Asserts: no panic; every duration of an accepted file is positive and converts (`ms`, `std`,
//! `as_secs_f64`) without overflow; an accepted file prints back (`--print-config`) as TOML that
//! parses to the same configuration.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use scalewise_collector::config::{Config, Dur};

fn durations(c: &Config) -> Vec<Dur> {
    let mut d = vec![
        c.flush_interval,
        c.metrics_window,
        c.memory_retention,
        c.memory_resolution,
        c.instance_ttl,
        c.retention.max_age,
    ];
    for t in &c.retention.tiers {
        d.push(t.older_than);
        d.push(t.resolution);
    }
    d
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("collector.toml");
    let Ok(cfg) = Config::from_toml(text, path) else {
        return;
    };
    let _ = cfg.validate();
    for d in durations(&cfg) {
        assert!(d.0 > 0, "zero duration accepted: {text:?}");
        assert!(d.ms() >= 0);
        let _ = d.std();
        assert!(d.as_secs_f64().is_finite());
    }
    let printed = toml::to_string(&cfg).expect("an accepted configuration prints");
    let back = Config::from_toml(&printed, path).expect("what --print-config prints parses");
    assert_eq!(back, cfg, "{printed}");
});
