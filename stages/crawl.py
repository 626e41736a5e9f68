"""DVC stage crawl: users.txt -> new shards in data/raw, and metrics/crawl.json."""

from imgrate.crawl.stage import run_stage
from imgrate.errors import run_main
from imgrate.params import load_params
from imgrate.paths import project_paths
from imgrate.progress import console, print_note, setup_logging


def main() -> None:
    setup_logging()
    paths = project_paths()
    report = run_stage(load_params(paths.params).crawl, paths)
    totals = report.to_metrics()["totals"]
    console.print(f"crawl: {totals['new_posts']} new posts from {totals['ok']}/{totals['users']} users, "
                  f"{totals['shards_written']} new shards in {report.seconds:.1f} s"
                  + (f"; stopped: {report.status}" if report.stop_reason else ""))
    if report.stop_reason:
        print_note(f"crawl stopped ({report.status})", report.stop_reason, style="red")


if __name__ == "__main__":
    run_main(main)
