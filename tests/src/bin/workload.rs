//! `scalewise-workload`: sample services with self-recorded ground truth, and a load generator.
//!
//! serve        [--host H] --port P --workers N [--cpu-ms X] [--lock-ms Z | --lock-cpu-ms Z]
//!              [--db ADDR --db-ms Y] [--backend ADDR --backend-ms B] [--pool K]
//!              [--undumpable-after-s T]
//! serve-async  --port P --db ADDR --db-ms Y [--cpu-ms X] [--pool K]
//! prefork      --port P --workers N [--cpu-ms X] [--db ADDR --db-ms Y]
//! worker       --redis ADDR --threads N --truth-file PATH [--db ADDR --db-ms Y] [--cpu-ms X]
//!              [--fill JOBS]
//! backend      --port P --ms B
//! load         --target ADDR --concurrency C --duration-s S [--think-ms T] [--reconnect 1]
//! get          --target ADDR --path /truth
//!
//! Services print `listening ADDR` on stdout and serve `GET /work` and `GET /truth`.

use scalewise_e2e::workload::{load, prefork, serve, serve_async, worker, Args};

fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprintln!("usage: scalewise-workload serve|serve-async|backend|load [flags]");
        std::process::exit(64);
    }
    let cmd = argv.remove(0);
    let args = Args::new(argv);
    // Make `listening` visible to a parent reading our stdout through a pipe.
    let result = match cmd.as_str() {
        "serve" => serve::run(&args),
        "serve-async" => serve_async::run(&args),
        "prefork" => prefork::run(&args),
        "worker" => worker::run(&args),
        "backend" => serve::backend(&args),
        "load" => load::run(&args),
        "get" => load::get_once(&args),
        other => {
            eprintln!("unknown command {other}");
            std::process::exit(64);
        }
    };
    if let Err(e) = result {
        eprintln!("scalewise-workload {cmd}: {e:#}");
        std::process::exit(1);
    }
}
