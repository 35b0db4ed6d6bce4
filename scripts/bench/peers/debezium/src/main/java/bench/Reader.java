package bench;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

import java.net.URI;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Debezium peer of scripts/bench/source.sh: reads an existing pgoutput slot with Debezium's
 * embedded engine, has every record serialized to JSON by the engine (format Json), counts the
 * data-change records and exits once it has counted CHANGES of them.
 *
 * <pre>java -cp ... bench.Reader URL SLOT PUBLICATION CHANGES [IDLE_SECONDS]</pre>
 *
 * URL is postgres://USER[:PASSWORD]@HOST:PORT/DB. Prints one line on stdout:
 * {@code records=N bytes=B startup_s=S stream_s=T last_lsn=L} (startup_s: JVM start to the
 * first record; stream_s: first to last record; last_lsn: source.lsn of the last record).
 * Exit 0 when CHANGES records were counted, 3 when none came for IDLE_SECONDS (default 120),
 * 2 on bad arguments, 4 when the engine stopped by itself (an error: see stderr).
 *
 * Why stop on the count and not on an LSN: the end LSN that source.sh takes is the WAL insert
 * position after the workload's last commit, so every change of the workload lies below it and
 * no data record ever reaches it; only a later record (or a heartbeat, which would cost a
 * timer and extra records) could tell the reader it has passed the end. The slot is created
 * just before the workload and the publication holds only the benchmark table, so the slot
 * carries exactly the workload's CHANGES row changes: counting them is exact.
 */
public final class Reader {
    public static void main(String[] args) throws Exception {
        // Before any logger exists: warnings and errors only, on stderr (slf4j-simple's default target).
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        if (args.length < 4 || args.length > 5) {
            System.err.println("usage: bench.Reader URL SLOT PUBLICATION CHANGES [IDLE_SECONDS]");
            System.exit(2);
        }
        final long t0 = System.nanoTime();
        URI url = URI.create(args[0]);
        String slot = args[1], publication = args[2];
        final long changes = Long.parseLong(args[3]);
        long idleSeconds = args.length > 4 ? Long.parseLong(args[4]) : 120;
        String[] userInfo = (url.getUserInfo() == null ? "postgres" : url.getUserInfo()).split(":", 2);

        Properties p = new Properties();
        // The engine's own name (required); it also keys the offsets.
        p.setProperty("name", "cdc-bench-debezium");
        p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        // One run from the slot's start: offsets kept in memory, never flushed to a file.
        p.setProperty("offset.storage", "org.apache.kafka.connect.storage.MemoryOffsetBackingStore");
        p.setProperty("offset.flush.interval.ms", "60000");
        // Required by the connector: the prefix of the (unused) topic names.
        p.setProperty("topic.prefix", "bench");
        p.setProperty("database.hostname", url.getHost());
        p.setProperty("database.port", String.valueOf(url.getPort() > 0 ? url.getPort() : 5432));
        p.setProperty("database.user", userInfo[0]);
        p.setProperty("database.password", userInfo.length > 1 ? userInfo[1] : "");
        p.setProperty("database.dbname", url.getPath().replaceFirst("^/", ""));
        // The same decoding plugin and publication as pg_recvlogical and cdc: same server-side work.
        p.setProperty("plugin.name", "pgoutput");
        p.setProperty("publication.name", publication);
        // The publication exists already: never create or alter it.
        p.setProperty("publication.autocreate.mode", "disabled");
        // The slot exists (made before the workload); Debezium must use it and leave it in place
        // (peers.sh drops it).
        p.setProperty("slot.name", slot);
        p.setProperty("slot.drop.on.stop", "false");
        // No table data snapshot (3.x name of the old "never"): with no stored offset the
        // connector streams from the slot's confirmed position, i.e. the whole workload.
        p.setProperty("snapshot.mode", "no_data");
        // One record per change: no extra tombstone after each delete.
        p.setProperty("tombstones.on.delete", "false");
        // Payload-only JSON, like cdc's documents and wal2json's output; with schemas on, each
        // record would also carry its full Connect schema, several times the payload.
        p.setProperty("converter.schemas.enable", "false");

        final AtomicLong count = new AtomicLong();
        final AtomicLong bytes = new AtomicLong();
        final AtomicLong firstAt = new AtomicLong();
        final AtomicLong lastAt = new AtomicLong(System.nanoTime());  // idle clock starts now
        final AtomicReference<String> lastValue = new AtomicReference<>();
        final CountDownLatch done = new CountDownLatch(1);
        // -Dreader.sample=true: print the first record's JSON to stderr, to see what is made.
        final boolean sample = Boolean.getBoolean("reader.sample");
        final AtomicReference<String> stopped = new AtomicReference<>();

        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
                .using(p)
                .notifying(record -> {
                    // The value is the record already serialized to JSON by the engine's converter.
                    String value = record.value();
                    // Data changes only: no tombstones (null value; off above anyway) and no
                    // heartbeats (not enabled; their topic is __debezium-heartbeat.<prefix>).
                    if (value == null || record.destination().startsWith("__debezium-heartbeat")) {
                        return;
                    }
                    long now = System.nanoTime();
                    if (firstAt.compareAndSet(0, now) && sample) {
                        System.err.println("debezium reader: first record: " + value);
                    }
                    lastAt.set(now);
                    bytes.addAndGet(value.length());  // uses the JSON so nothing can skip making it
                    if (count.incrementAndGet() == changes) {
                        lastValue.set(value);
                        done.countDown();
                    }
                })
                .using((success, message, error) -> {
                    // The engine stopped: on purpose (after close below) or by an error.
                    stopped.compareAndSet(null, (success ? "ok: " : "error: ") + message
                            + (error != null ? " (" + error + ")" : ""));
                    done.countDown();
                })
                .build();

        ExecutorService executor = Executors.newSingleThreadExecutor();
        executor.execute(engine);

        int exit = 0;
        while (!done.await(1, TimeUnit.SECONDS)) {
            if (System.nanoTime() - lastAt.get() > TimeUnit.SECONDS.toNanos(idleSeconds)) {
                System.err.printf("debezium reader: no record for %d s, counted %d of %d%n",
                        idleSeconds, count.get(), changes);
                exit = 3;
                break;
            }
        }
        if (exit == 0 && count.get() < changes) {
            System.err.printf("debezium reader: engine stopped (%s), counted %d of %d%n",
                    stopped.get(), count.get(), changes);
            exit = 4;
        }
        long first = firstAt.get(), last = lastAt.get();
        System.out.printf("records=%d bytes=%d startup_s=%.3f stream_s=%.3f last_lsn=%s%n",
                count.get(), bytes.get(),
                first == 0 ? 0.0 : (first - t0) / 1e9,
                first == 0 ? 0.0 : (last - first) / 1e9,
                lsnOf(lastValue.get()));
        System.out.flush();

        // Stop the engine from this thread (not from the consumer's); do not let a slow
        // shutdown stretch the measured time past a few seconds.
        if (stopped.get() != null) {
            System.exit(exit);  // the engine stopped by itself: nothing to close
        }
        Thread closer = new Thread(() -> {
            try {
                engine.close();
            } catch (Exception e) {
                System.err.println("debezium reader: close: " + e);
            }
        });
        closer.setDaemon(true);
        closer.start();
        closer.join(5000);
        System.exit(exit);  // also ends the engine's thread if close timed out
    }

    /** source.lsn of a Debezium JSON value (a number), as PostgreSQL's X/X text; "-" if none. */
    private static String lsnOf(String value) {
        if (value == null) {
            return "-";
        }
        int i = value.indexOf("\"lsn\":");
        if (i < 0) {
            return "-";
        }
        int j = i + 6, k = j;
        while (k < value.length() && Character.isDigit(value.charAt(k))) {
            k++;
        }
        if (k == j) {
            return "-";
        }
        long lsn = Long.parseLong(value.substring(j, k));
        return String.format("%X/%X", lsn >>> 32, lsn & 0xFFFFFFFFL);
    }
}
