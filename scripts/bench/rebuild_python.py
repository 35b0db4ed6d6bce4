"""The two references for scripts/bench/rebuild.sh, on the benchmark's table and documents.

  python rebuild_python.py loader URL NODE INDEX   # what users do today: a server-side psycopg
                                                   # cursor feeding opensearch-py's helpers.bulk
  python rebuild_python.py direct NODE INDEX ROWS  # the node's direct capacity: parallel_bulk of
                                                   # documents prepared in memory beforehand
  python rebuild_python.py ceiling NODE INDEX ROWS # the node's ceiling: bulk bodies rendered in
                                                   # memory beforehand, in cdc's form, sent on 4
                                                   # connections by a client that does almost nothing

Each prints `docs/s <n>` and `seconds <s>`; the ceiling also prints `client_cpu <s>`, its own CPU
seconds while sending, to show that the node alone set its pace. The documents have the fields and values cdc indexes
from the table (timestamps in cdc's UTC form).
"""

import sys
import time

from opensearchpy import OpenSearch, helpers


def title(i):
    # Mirrors the INSERT in rebuild.sh: about 200 bytes.
    return f"event {i} " + "lorem ipsum dolor sit amet consectetur " * 5


def document(i):
    return {
        "id": i,
        "tenant": i % 100,
        "state": "draft" if i % 10 == 0 else "published",
        "title": title(i),
        "score": (i % 10000) / 100,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1767225600 + i)),
    }


def finish(client, index, rows, start):
    client.indices.refresh(index=index)
    elapsed = time.monotonic() - start
    count = client.count(index=index)["count"]
    if count != rows:
        sys.exit(f"{index}: {count} of {rows} documents indexed")
    print(f"docs/s {rows / elapsed:.0f}")
    print(f"seconds {elapsed:.2f}")


def loader(url, node, index):
    import psycopg

    client = OpenSearch(node, timeout=120)
    client.indices.create(index=index)
    start = time.monotonic()
    rows = 0
    with psycopg.connect(url) as conn:
        with conn.cursor(name="rebuild") as cur:
            cur.itersize = 2000
            cur.execute("SELECT id, tenant, state, title, score, created_at FROM events")

            def actions():
                nonlocal rows
                for id_, tenant, state, title_, score, created_at in cur:
                    rows += 1
                    yield {
                        "_index": index,
                        "_id": str(id_),
                        "_source": {
                            "id": id_,
                            "tenant": tenant,
                            "state": state,
                            "title": title_,
                            "score": float(score),
                            "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        },
                    }

            helpers.bulk(client, actions(), chunk_size=1000)
    finish(client, index, rows, start)


def direct(node, index, rows):
    client = OpenSearch(node, timeout=120)
    client.indices.create(index=index)
    prepared = [{"_index": index, "_id": str(i), "_source": document(i)} for i in range(1, rows + 1)]
    start = time.monotonic()
    failed = 0
    for ok, _ in helpers.parallel_bulk(client, prepared, thread_count=4, chunk_size=1000, raise_on_error=False):
        failed += not ok
    if failed:
        sys.exit(f"direct load: {failed} failed")
    finish(client, index, rows, start)


def ceiling(node, index, rows):
    """How fast the node indexes these documents when the client costs it nothing: the fastest any
    loader, cdc included, can go on this machine. The index has the settings cdc's rebuild gives
    its new index, the bulk lines are cdc's (external versions), and the bodies are rendered
    before the clock starts, so the client only writes bytes to sockets and reads short replies."""
    import http.client
    import json
    import threading
    from urllib.parse import urlsplit

    client = OpenSearch(node, timeout=120)
    client.indices.create(
        index=index, body={"settings": {"refresh_interval": "-1", "number_of_replicas": 0, "gc_deletes": "24h"}}
    )
    bodies = []
    for first in range(1, rows + 1, 1000):
        lines = []
        for i in range(first, min(first + 1000, rows + 1)):
            action = {"index": {"_index": index, "_id": str(i), "version": 1, "version_type": "external_gte"}}
            lines.append(json.dumps(action, separators=(",", ":")))
            lines.append(json.dumps(document(i), separators=(",", ":")))
        bodies.append(("\n".join(lines) + "\n").encode())
    where = urlsplit(node)
    failures = []

    def send(share):
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        for body in share:
            conn.request("POST", "/_bulk?filter_path=errors", body, {"Content-Type": "application/x-ndjson"})
            reply = conn.getresponse().read()
            if b'"errors":false' not in reply:
                failures.append(reply[:500])

    threads = [threading.Thread(target=send, args=(bodies[k::4],)) for k in range(4)]
    start = time.monotonic()
    cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client_cpu = time.process_time() - cpu
    if failures:
        sys.exit(f"ceiling load: {len(failures)} bulk requests failed, e.g. {failures[0]!r}")
    finish(client, index, rows, start)
    print(f"client_cpu {client_cpu:.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "loader":
        loader(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "ceiling":
        ceiling(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        direct(sys.argv[2], sys.argv[3], int(sys.argv[4]))
