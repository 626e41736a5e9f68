"""DVC stage export: data/raw shards -> data/tables/{posts,users}.jsonl (+ MongoDB when configured), and metrics/export.json.

The same entry as ``imgrate export``: imgrate.entry with the stage's declaration, imgrate.export.STAGE."""

from imgrate.entry import script
from imgrate.export import STAGE

if __name__ == "__main__":
    script(STAGE)
