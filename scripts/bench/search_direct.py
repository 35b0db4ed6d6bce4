"""The node's own capacity, for scripts/bench/search.sh: bulk-loads the benchmark's documents
straight into an index with opensearch-py's parallel_bulk (two threads, like cdc's default two
requests in flight, 1000 documents per request) and prints `docs/s <n>`.

The documents are the ones cdc indexes from the benchmark table (same fields, same values), so
the two figures compare the same work.

Usage: python search_direct.py URL INDEX ROWS
"""

import sys
import time

from opensearchpy import OpenSearch, helpers


def document(i):
    # Mirrors the INSERT in search.sh.
    return {"id": i, "title": f"title {i}", "body": "lorem ipsum dolor sit amet " * 4 + str(i), "views": i % 1000, "state": "published" if i % 10 else "draft"}


def actions(index, rows):
    for i in range(1, rows + 1):
        yield {"_index": index, "_id": str(i), "_source": document(i)}


def main():
    url, index, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = OpenSearch(url, timeout=60)
    client.indices.create(index=index)
    start = time.monotonic()
    failed = 0
    for ok, _ in helpers.parallel_bulk(client, actions(index, rows), thread_count=2, chunk_size=1000, raise_on_error=False):
        failed += not ok
    client.indices.refresh(index=index)
    elapsed = time.monotonic() - start
    count = client.count(index=index)["count"]
    if failed or count != rows:
        sys.exit(f"direct load: {failed} failed, {count} of {rows} indexed")
    print(f"docs/s {rows / elapsed:.0f}")
    print(f"seconds {elapsed:.2f}")


if __name__ == "__main__":
    main()
