//! What the runtime detector reads from a monitored process: its executable name and maps, and
//! its binary's ELF headers and `.go.buildinfo` section (any binary can claim to be Go).
#![no_main]
use libfuzzer_sys::fuzz_target;
use scalewise_agent::runtime::*;

fuzz_target!(|data: &[u8]| {
    let _ = go_build_version(data);
    let _ = elf_section(&mut std::io::Cursor::new(data), ".go.buildinfo", 1 << 20);
    let text = String::from_utf8_lossy(data);
    let cut = text.char_indices().nth(16).map(|(i, _)| i).unwrap_or(text.len());
    let (name, maps) = text.split_at(cut);
    let _ = classify(name, maps);
    let _ = parse_statm_resident(&text);
});
