/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, cache.c: the customer cache publisher (run --cache-dir):
 * resync requests answered with snapshots of DIR/<stream>.jsonl, indexed
 * once and chunked lazily.
 */
#include "central.h"

/* ======================================================================
 * customer cache: resync requests answered with snapshots (main thread)
 *
 * A snapshot of a stream is read from DIR/<stream>.jsonl (protocol.md,
 * "Snapshot file"): a header line, then one record per line. One pass over
 * the file builds an index (where each chunk starts); the chunks themselves
 * are read and published one at a time, as window slots free up, so memory
 * stays at about one chunk (1 MiB) per slot whatever the file's size.
 *
 * Record lines are sent as they are, not parsed: the files are central's
 * own data, and a test may serve a malformed record on purpose to drive the
 * agent's refusal path. Only what would break the chunk's framing is
 * skipped (with a warning): a line that is not {...}, or one that cannot fit
 * in a chunk.
 * ====================================================================== */

/* The streams of protocol.md "Customer cache", in resync priority order. */
const char *const cache_streams[] = { "members", "coupons", "catalogue", "inventory",
				     "scripts",  "recos",   "rules" };

int stream_find(const char *name)
{
	int i;

	for (i = 0; i < N_STREAMS; i++)
		if (strcmp(name, cache_streams[i]) == 0)
			return i;
	return -1;
}

/* Keys are 1..64 bytes of [A-Za-z0-9_.:>-] (protocol.md, "Streams"). */
static int cache_key_ok(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > CACHE_KEY_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == ':' || c == '>' || c == '-'))
			return 0;
	}
	return 1;
}

/* FNV-1a over the 8 bytes of v. */
static uint64_t fnv_i64(uint64_t h, int64_t v)
{
	uint64_t u = (uint64_t)v;
	int i;

	for (i = 0; i < 8; i++) {
		h ^= (u >> (8 * i)) & 0xffu;
		h *= 1099511628211ull;
	}
	return h;
}

int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + (int64_t)st->st_mtim.tv_nsec;
}

/* s[0..n) without surrounding blanks and line ends; *out_len 0 for a blank line. */
const char *line_trim(const char *s, size_t n, size_t *out_len)
{
	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	while (n && (*s == ' ' || *s == '\t')) {
		s++;
		n--;
	}
	*out_len = n;
	return s;
}

/* The one rule, shared by the index pass and the chunk reader, for which
 * lines are records (see the section comment). */
static int record_line_ok(const char *s, size_t n, size_t budget)
{
	return n >= 2 && s[0] == '{' && s[n - 1] == '}' && n + 1 <= budget;
}

static void index_unref(struct snap_index *ix)
{
	if (ix && --ix->refs == 0) {
		free(ix->offsets);
		free(ix->forgotten);
		free(ix);
	}
}

static size_t index_budget(const struct snap_index *ix)
{
	/* "forgotten" goes in the last chunk: every chunk leaves room for it,
	 * so the boundaries do not depend on which chunk is last. */
	return CHUNK_MAX_BYTES - CHUNK_HEADER_RESERVE - ix->forgotten_len;
}

void cache_path(char *buf, size_t size, const char *name, const char *ext)
{
	snprintf(buf, size, "%s/%s%s", g.opt.cache_dir, name, ext);
}

/* DIR/forgotten.txt (members only): one member id per line, blank lines and
 * '#' comments ignored, at most FORGOTTEN_MAX_BYTES once rendered. A missing
 * file is an empty list. 0, or -1 if it exists but cannot be read. */
static int forgotten_load(struct snap_index *ix)
{
	struct sbuf b = { 0 };
	char path[4096], q[300], q2[200];
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int64_t lineno = 0;
	struct stat st;
	FILE *f;
	int rc = -1;

	cache_path(path, sizeof path, "forgotten", ".txt");
	f = fopen(path, "re");
	if (!f) {
		if (errno == ENOENT)
			return 0;
		log_at(LVL_ERROR, "cannot open forgotten list", "path=%s err=%s",
		       lq(q, sizeof q, path), lq(q2, sizeof q2, strerror(errno)));
		return -1;
	}
	if (fstat(fileno(f), &st) != 0)
		goto cleanup;
	ix->fg_size = (int64_t)st.st_size;
	ix->fg_mtime_ns = mtime_ns(&st);
	while ((n = getline(&line, &cap, f)) >= 0) {
		size_t len;
		const char *s = line_trim(line, (size_t)n, &len);

		lineno++;
		if (len == 0 || s[0] == '#')
			continue;
		if (!cache_key_ok(s, len)) {
			log_at(LVL_WARN, "forgotten.txt: not a member id; line skipped",
			       "line=%" PRId64, lineno);
			continue;
		}
		if (b.len + len + 3 > FORGOTTEN_MAX_BYTES) {
			log_at(LVL_WARN, "forgotten.txt: list too long; the rest is not sent",
			       "line=%" PRId64 " max_bytes=%u", lineno, FORGOTTEN_MAX_BYTES);
			break;
		}
		if (b.len)
			sb_put(&b, ",", 1);
		sb_put(&b, "\"", 1);
		sb_put(&b, s, len); /* key characters need no escaping */
		sb_put(&b, "\"", 1);
	}
	if (ferror(f) || b.oom) {
		log_at(LVL_ERROR, "cannot read forgotten list", "path=%s", lq(q, sizeof q, path));
		goto cleanup;
	}
	ix->forgotten = b.p;
	ix->forgotten_len = b.len;
	b.p = NULL;
	rc = 0;
cleanup:
	free(b.p);
	free(line);
	fclose(f);
	return rc;
}

/* The header line: {"v":1,"type":"snapshot_file","stream":S,"version":N}. */
int header_parse(const char *s, size_t n, int stream, int64_t *version, char *why,
			size_t wlen)
{
	cJSON *h = cJSON_ParseWithLength(s, n);
	const cJSON *it;
	int rc = -1;

	if (!cJSON_IsObject(h)) {
		snprintf(why, wlen, "header: first line is not a JSON object");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(h, "v");
	if (!cJSON_IsNumber(it) || it->valuedouble != 1.0) {
		snprintf(why, wlen, "header.v: missing or not 1");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(h, "type");
	if (!cJSON_IsString(it) || strcmp(it->valuestring, "snapshot_file") != 0) {
		snprintf(why, wlen, "header.type: missing or not \"snapshot_file\"");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(h, "stream");
	if (!cJSON_IsString(it) || strcmp(it->valuestring, cache_streams[stream]) != 0) {
		snprintf(why, wlen, "header.stream: missing or not \"%s\" (the file's name)",
			 cache_streams[stream]);
		goto out;
	}
	if (json_int64(cJSON_GetObjectItemCaseSensitive(h, "version"), version) != 0 ||
	    *version < 1) {
		snprintf(why, wlen, "header.version: missing or not an integer in 1..2^53");
		goto out;
	}
	rc = 0;
out:
	cJSON_Delete(h);
	return rc;
}

/* One pass over DIR/<stream>.jsonl: version, chunk boundaries, snapshot id.
 *
 * The id is "<stream>-<version>-<16 hex>", the hex an FNV-1a hash of what
 * identifies this exact content and chunking: the file's device, inode,
 * size and mtime (ns), forgotten.txt's size and mtime, and --chunk-records.
 * The same file served by a restarted central gets the same id, so an
 * agent's resume request still matches; any rewrite of the file changes it.
 *
 * A missing file is served as an empty stream at version 1: one chunk,
 * "records":[] (protocol.md: an empty stream is one chunk), so an agent
 * bootstrapping a stream central has no data for completes instead of
 * timing out forever; its cursor becomes 1, and central's first real
 * content (version > 1) reaches it as a gap -> resync -> new snapshot.
 *
 * Returns a new index (one reference) or NULL, the reason logged. */
static struct snap_index *index_build(int stream)
{
	struct snap_index *ix = calloc(1, sizeof *ix);
	char path[4096], q[300], q2[300], why[200];
	char *line = NULL;
	size_t cap = 0, alloc = 0, budget, chunk_bytes = 0;
	int64_t in_chunk = 0, lineno = 1, skipped = 0;
	uint64_t h = 14695981039346656037ull;
	struct stat st;
	ssize_t n;
	FILE *f = NULL;
	int ok = 0;

	if (!ix)
		return NULL;
	ix->refs = 1;
	ix->stream = stream;
	ix->fg_size = ix->fg_mtime_ns = -1;
	if (stream == 0 && forgotten_load(ix) != 0)
		goto cleanup;
	budget = index_budget(ix);
	cache_path(path, sizeof path, cache_streams[stream], ".jsonl");
	f = fopen(path, "re");
	if (!f && errno != ENOENT) {
		log_at(LVL_ERROR, "cannot open snapshot file", "path=%s err=%s",
		       lq(q, sizeof q, path), lq(q2, sizeof q2, strerror(errno)));
		goto cleanup;
	}
	if (!f) {
		ix->missing = 1;
		ix->version = 1;
		ix->nchunks = 1;
		ix->offsets = calloc(2, sizeof *ix->offsets);
		if (!ix->offsets)
			goto cleanup;
	} else {
		size_t hl;
		const char *hs;

		if (fstat(fileno(f), &st) != 0)
			goto cleanup;
		ix->dev = st.st_dev;
		ix->ino = st.st_ino;
		ix->size = st.st_size;
		ix->mtime_ns = mtime_ns(&st);
		n = getline(&line, &cap, f);
		hs = n > 0 ? line_trim(line, (size_t)n, &hl) : "";
		if (n <= 0)
			hl = 0;
		if (header_parse(hs, hl, stream, &ix->version, why, sizeof why) != 0) {
			log_at(LVL_ERROR, "snapshot file refused", "path=%s reason=%s",
			       lq(q, sizeof q, path), lq(q2, sizeof q2, why));
			goto cleanup;
		}
		alloc = 16;
		ix->offsets = malloc(alloc * sizeof *ix->offsets);
		if (!ix->offsets)
			goto cleanup;
		ix->offsets[0] = ftello(f);
		for (;;) {
			off_t pos = ftello(f);
			size_t len;
			const char *s;

			n = getline(&line, &cap, f);
			if (n < 0)
				break;
			lineno++;
			s = line_trim(line, (size_t)n, &len);
			if (len == 0)
				continue;
			if (!record_line_ok(s, len, budget)) {
				if (skipped++ < 10)
					log_at(LVL_WARN,
					       "snapshot file: line is not a {...} record or is larger "
					       "than a chunk; skipped",
					       "path=%s line=%" PRId64 " bytes=%zu", lq(q, sizeof q, path),
					       lineno, len);
				continue;
			}
			if (in_chunk > 0 && (in_chunk >= g.opt.chunk_records ||
					     chunk_bytes + len + 1 > budget)) {
				if ((size_t)ix->nchunks + 2 >= alloc) {
					off_t *np = realloc(ix->offsets, 2 * alloc * sizeof *np);

					if (!np)
						goto cleanup;
					ix->offsets = np;
					alloc *= 2;
				}
				ix->offsets[++ix->nchunks] = pos;
				in_chunk = 0;
				chunk_bytes = 0;
			}
			in_chunk++;
			chunk_bytes += len + 1;
			ix->records++;
		}
		if (ferror(f)) {
			log_at(LVL_ERROR, "cannot read snapshot file", "path=%s",
			       lq(q, sizeof q, path));
			goto cleanup;
		}
		ix->offsets[++ix->nchunks] = ftello(f); /* the end of chunk nchunks-1 */
		if (skipped > 10)
			log_at(LVL_WARN, "snapshot file: more lines skipped", "path=%s skipped=%" PRId64,
			       lq(q, sizeof q, path), skipped);
	}
	h = fnv_i64(h, ix->missing);
	h = fnv_i64(h, (int64_t)ix->dev);
	h = fnv_i64(h, (int64_t)ix->ino);
	h = fnv_i64(h, (int64_t)ix->size);
	h = fnv_i64(h, ix->mtime_ns);
	h = fnv_i64(h, ix->fg_size);
	h = fnv_i64(h, ix->fg_mtime_ns);
	h = fnv_i64(h, g.opt.chunk_records);
	snprintf(ix->id, sizeof ix->id, "%s-%" PRId64 "-%016" PRIx64, cache_streams[stream],
		 ix->version, h);
	log_at(LVL_INFO, "snapshot indexed",
	       "stream=%s snapshot=%s version=%" PRId64 " records=%" PRId64 " chunks=%" PRId64
	       " missing_file=%d",
	       cache_streams[stream], ix->id, ix->version, ix->records, ix->nchunks, ix->missing);
	ok = 1;

cleanup:
	free(line);
	if (f)
		fclose(f);
	if (!ok) {
		index_unref(ix);
		return NULL;
	}
	return ix;
}

/* The index of the stream's file as it is now: the cached one if neither
 * the file nor forgotten.txt changed, else a new one. Borrowed (the cache
 * holds a reference); NULL if the file cannot be served. */
static struct snap_index *index_current(int stream)
{
	struct snap_index *ix = g.index[stream];
	char path[4096];
	struct stat st;

	if (ix) {
		int same;

		cache_path(path, sizeof path, cache_streams[stream], ".jsonl");
		if (stat(path, &st) == 0)
			same = !ix->missing && st.st_dev == ix->dev && st.st_ino == ix->ino &&
			       st.st_size == ix->size && mtime_ns(&st) == ix->mtime_ns;
		else
			same = ix->missing && errno == ENOENT;
		if (same && stream == 0) {
			cache_path(path, sizeof path, "forgotten", ".txt");
			if (stat(path, &st) == 0)
				same = (int64_t)st.st_size == ix->fg_size &&
				       mtime_ns(&st) == ix->fg_mtime_ns;
			else
				same = errno == ENOENT && ix->fg_size < 0;
		}
		if (same)
			return ix;
	}
	ix = index_build(stream);
	if (!ix)
		return NULL;
	index_unref(g.index[stream]); /* jobs still sending the old one keep it alive */
	g.index[stream] = ix;
	return ix;
}

static int same_device(const struct ident *a, const struct ident *b)
{
	return strcmp(a->tenant, b->tenant) == 0 && strcmp(a->store, b->store) == 0 &&
	       strcmp(a->device, b->device) == 0;
}

/* Unlink j (prev is the job before it, or NULL) and free it. */
static void job_remove(struct snap_job *prev, struct snap_job *j)
{
	if (prev)
		prev->next = j->next;
	else
		g.jobs_head = j->next;
	if (g.jobs_tail == j)
		g.jobs_tail = prev;
	g.n_jobs--;
	index_unref(j->ix);
	free(j);
}

void jobs_free_all(void)
{
	int i;

	while (g.jobs_head)
		job_remove(NULL, g.jobs_head);
	for (i = 0; i < N_STREAMS; i++) {
		index_unref(g.index[i]);
		g.index[i] = NULL;
	}
	while (g.drops) {
		struct drop_mark *d = g.drops;

		g.drops = d->next;
		free(d);
	}
}

/* Start sending ix to a device from chunk `from`, replacing what it was
 * being sent for that stream (it asked again: that snapshot is dead). */
static void job_start(const struct ident *who, struct snap_index *ix, int64_t from)
{
	struct snap_job *j, *prev = NULL;

	for (j = g.jobs_head; j; prev = j, j = j->next) {
		if (j->ix->stream == ix->stream && same_device(&j->who, who)) {
			log_at(LVL_DEBUG, "snapshot in progress replaced",
			       "tenant=%s store=%s device=%s snapshot=%s next_chunk=%" PRId64,
			       who->tenant, who->store, who->device, j->ix->id, j->next_chunk);
			job_remove(prev, j);
			break;
		}
	}
	if (g.n_jobs >= SNAPSHOT_JOBS_MAX) {
		log_at(LVL_WARN, "too many snapshots in progress; request not answered",
		       "tenant=%s store=%s device=%s stream=%s max=%d", who->tenant, who->store,
		       who->device, cache_streams[ix->stream], SNAPSHOT_JOBS_MAX);
		return;
	}
	j = calloc(1, sizeof *j);
	if (!j) {
		log_at(LVL_ERROR, "out of memory starting a snapshot", NULL);
		return;
	}
	j->who = *who;
	j->ix = ix;
	ix->refs++;
	snprintf(j->topic, sizeof j->topic, "scrm/v1/%s/%s/%s/down/cache/%s", who->tenant,
		 who->store, who->device, cache_streams[ix->stream]);
	j->next_chunk = j->first_chunk = from;
	j->due_ms = tk_mono_ms();
	if (g.jobs_tail)
		g.jobs_tail->next = j;
	else
		g.jobs_head = j;
	g.jobs_tail = j;
	g.n_jobs++;
}

/* --drop-chunk: 1 if this job's next chunk is to be skipped (the first time
 * only, per device, stream and snapshot id). */
static int drop_hook(const struct snap_job *j)
{
	struct drop_mark *d;

	if (g.opt.drop_chunk < 0 || j->next_chunk != g.opt.drop_chunk)
		return 0;
	for (d = g.drops; d; d = d->next)
		if (d->stream == j->ix->stream && same_device(&d->who, &j->who) &&
		    strcmp(d->id, j->ix->id) == 0)
			return 0;
	d = calloc(1, sizeof *d);
	if (!d)
		return 0;
	d->who = j->who;
	d->stream = j->ix->stream;
	snprintf(d->id, sizeof d->id, "%s", j->ix->id);
	d->next = g.drops;
	g.drops = d;
	return 1;
}

/* Chunk j->next_chunk as a message in b. 0, or -1 (reason logged). */
static int chunk_build(const struct snap_job *j, struct sbuf *b)
{
	const struct snap_index *ix = j->ix;
	int64_t k = j->next_chunk;
	char path[4096], q[300];
	char *line = NULL;
	size_t cap = 0;
	size_t budget = index_budget(ix);
	int first = 1, rc = -1;
	FILE *f = NULL;

	sb_add(b,
	       "{\"v\":1,\"type\":\"snapshot\",\"stream\":\"%s\",\"snapshot\":\"%s\","
	       "\"version\":%" PRId64 ",\"chunk\":%" PRId64 ",\"chunks\":%" PRId64
	       ",\"ts\":%" PRId64 ",\"records\":[",
	       cache_streams[ix->stream], ix->id, ix->version, k, ix->nchunks, tk_wall_ms());
	if (!ix->missing) {
		struct stat st;

		cache_path(path, sizeof path, cache_streams[ix->stream], ".jsonl");
		f = fopen(path, "re");
		if (!f || fstat(fileno(f), &st) != 0 || st.st_dev != ix->dev ||
		    st.st_ino != ix->ino || st.st_size != ix->size || mtime_ns(&st) != ix->mtime_ns) {
			/* The agent times out, asks again and gets a new snapshot. */
			log_at(LVL_WARN, "snapshot file changed while being sent; snapshot abandoned",
			       "path=%s snapshot=%s chunk=%" PRId64, lq(q, sizeof q, path), ix->id, k);
			goto cleanup;
		}
		if (fseeko(f, ix->offsets[k], SEEK_SET) != 0)
			goto cleanup;
		while (ftello(f) < ix->offsets[k + 1]) {
			ssize_t n = getline(&line, &cap, f);
			size_t len;
			const char *s;

			if (n < 0)
				break;
			s = line_trim(line, (size_t)n, &len);
			if (len == 0 || !record_line_ok(s, len, budget))
				continue;
			if (!first)
				sb_put(b, ",", 1);
			sb_put(b, s, len);
			first = 0;
		}
		if (ferror(f)) {
			log_at(LVL_ERROR, "cannot read snapshot file", "path=%s",
			       lq(q, sizeof q, path));
			goto cleanup;
		}
	}
	sb_put(b, "]", 1);
	if (k == ix->nchunks - 1 && ix->forgotten_len) {
		sb_add(b, ",\"forgotten\":[");
		sb_put(b, ix->forgotten, ix->forgotten_len);
		sb_put(b, "]", 1);
	}
	sb_put(b, "}", 1);
	if (b->oom) {
		log_at(LVL_ERROR, "out of memory building a snapshot chunk", NULL);
		goto cleanup;
	}
	rc = 0;
cleanup:
	free(line);
	if (f)
		fclose(f);
	return rc;
}

/* Main thread: publish due chunks while the window has room, one chunk per
 * job in turn (round robin), so one big snapshot does not starve the others. */
void snapshots_pump(void)
{
	for (;;) {
		MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
		MQTTAsync_message msg = MQTTAsync_message_initializer;
		struct snap_job *j, *prev = NULL;
		struct sbuf b = { 0 };
		int64_t now = tk_mono_ms();
		uint32_t gen = 0;
		int idx, rc;

		for (j = g.jobs_head; j && j->due_ms > now; j = j->next)
			prev = j;
		if (!j)
			return;
		if (drop_hook(j)) {
			log_at(LVL_INFO, "snapshot chunk dropped (--drop-chunk)",
			       "tenant=%s store=%s device=%s snapshot=%s chunk=%" PRId64,
			       j->who.tenant, j->who.store, j->who.device, j->ix->id, j->next_chunk);
			g.c.chunks_dropped++;
			j->next_chunk++;
			j->due_ms = now + g.opt.snapshot_delay_ms;
			if (j->next_chunk >= j->ix->nchunks)
				job_remove(prev, j);
			continue;
		}
		idx = slot_take(1, &gen);
		if (idx < 0)
			return; /* woken again by a completion or a reconnect */
		if (chunk_build(j, &b) != 0) {
			slot_release(idx);
			free(b.p);
			job_remove(prev, j);
			continue;
		}
		msg.payload = b.p;
		msg.payloadlen = (int)b.len;
		msg.qos = 1;
		msg.retained = 0;
		ro.onSuccess5 = on_chunk_ok;
		ro.onFailure5 = on_chunk_fail;
		ro.context = slot_context(idx, gen);
		rc = MQTTAsync_sendMessage(g.client, j->topic, &msg, &ro);
		free(b.p); /* Paho copied it */
		if (rc != MQTTASYNC_SUCCESS) {
			slot_release(idx);
			if (rc == MQTTASYNC_DISCONNECTED)
				return; /* the same chunk again after the reconnect */
			log_at(LVL_WARN, "snapshot chunk publish refused; snapshot abandoned",
			       "topic=%s rc=%d err=\"%s\"", j->topic, rc, MQTTAsync_strerror(rc));
			job_remove(prev, j);
			continue;
		}
		g.c.chunks_sent++;
		log_at(LVL_DEBUG, "snapshot chunk sent",
		       "topic=%s snapshot=%s chunk=%" PRId64 " chunks=%" PRId64 " bytes=%zu", j->topic,
		       j->ix->id, j->next_chunk, j->ix->nchunks, b.len);
		j->next_chunk++;
		j->due_ms = now + g.opt.snapshot_delay_ms;
		if (j->next_chunk >= j->ix->nchunks) {
			g.c.snapshots_sent++;
			log_at(LVL_INFO, "snapshot sent",
			       "tenant=%s store=%s device=%s stream=%s snapshot=%s version=%" PRId64
			       " chunks=%" PRId64 " from_chunk=%" PRId64 " records=%" PRId64,
			       j->who.tenant, j->who.store, j->who.device, cache_streams[j->ix->stream],
			       j->ix->id, j->ix->version, j->ix->nchunks, j->first_chunk,
			       j->ix->records);
			job_remove(prev, j);
		} else if (j->next) {
			/* to the back of the line */
			if (prev)
				prev->next = j->next;
			else
				g.jobs_head = j->next;
			j->next = NULL;
			g.jobs_tail->next = j;
			g.jobs_tail = j;
		}
	}
}

/* Milliseconds until a job waiting for --snapshot-delay-ms is due, or -1.
 * Jobs already due wait for a window slot: a completion wakes the loop. */
int64_t snapshots_due_in(void)
{
	const struct snap_job *j;
	int64_t now = tk_mono_ms(), best = -1;

	for (j = g.jobs_head; j; j = j->next) {
		if (j->due_ms > now && (best < 0 || j->due_ms - now < best))
			best = j->due_ms - now;
	}
	return best;
}

static void resync_drop(const char *topic, const char *why)
{
	char q1[200], q2[200];

	g.c.resync_dropped++;
	if (peer_warns_left())
		log_at(LVL_WARN, "resync request dropped", "topic=%s reason=%s",
		       lq(q1, sizeof q1, topic), lq(q2, sizeof q2, why));
}

/* A resync request (protocol.md, "Resync request"): validate, record, and
 * answer with a snapshot, resumed when the agent holds part of the current one. */
void resync_handle(const char *topic, const char *payload, size_t len)
{
	struct ident id;
	cJSON *root = NULL;
	const cJSON *it;
	const char *reason = NULL, *snap = NULL;
	struct snap_index *ix;
	int64_t cursor = 0, from_chunk = -1, start = 0;
	int stream = -1;
	char q1[200], q2[200];

	{
		char why[300];

		if (parse_topic(topic, &id, "up/cache/resync", why, sizeof why) != 0) {
			resync_drop(topic, why);
			return;
		}
	}
	root = cJSON_ParseWithLength(payload, len);
	if (!cJSON_IsObject(root)) {
		resync_drop(topic, "payload: not a JSON object");
		goto cleanup;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "v");
	if (!cJSON_IsNumber(it) || it->valuedouble != 1.0) {
		resync_drop(topic, "v: missing or not 1");
		goto cleanup;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "stream");
	if (!cJSON_IsString(it) || (stream = stream_find(it->valuestring)) < 0) {
		resync_drop(topic, "stream: missing or not one of members coupons catalogue "
				   "inventory scripts recos rules");
		goto cleanup;
	}
	if (json_int64(cJSON_GetObjectItemCaseSensitive(root, "cursor"), &cursor) != 0 ||
	    cursor < 0) {
		resync_drop(topic, "cursor: missing or not an integer in 0..2^53");
		goto cleanup;
	}
	if (opt_string(root, "reason", RESYNC_REASON_MAX, &reason) < 0) {
		resync_drop(topic, "reason: not a string of 1..32 bytes");
		goto cleanup;
	}
	if (opt_string(root, "snapshot", SNAPSHOT_ID_MAX, &snap) < 0) {
		resync_drop(topic, "snapshot: not a string of 1..64 bytes");
		goto cleanup;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "from_chunk");
	if (it && !cJSON_IsNull(it) && (json_int64(it, &from_chunk) != 0 || from_chunk < 0)) {
		resync_drop(topic, "from_chunk: not an integer in 0..2^53");
		goto cleanup;
	}

	g.c.resync_requests++;
	{
		sqlite3_stmt *s = g.st.ins_resync;

		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 4, cache_streams[stream], -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 5, cursor);
		if (reason)
			sqlite3_bind_text(s, 6, reason, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(s, 6);
		if (snap)
			sqlite3_bind_text(s, 7, snap, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(s, 7);
		if (from_chunk >= 0)
			sqlite3_bind_int64(s, 8, from_chunk);
		else
			sqlite3_bind_null(s, 8);
		sqlite3_bind_int64(s, 9, tk_wall_ms());
		db_step(s); /* logged on failure; the request is still answered */
		sqlite3_clear_bindings(s);
	}
	log_at(LVL_INFO, "resync request",
	       "tenant=%s store=%s device=%s stream=%s cursor=%" PRId64
	       " reason=%s snapshot=%s from_chunk=%" PRId64,
	       id.tenant, id.store, id.device, cache_streams[stream], cursor,
	       lq(q1, sizeof q1, reason ? reason : "-"), lq(q2, sizeof q2, snap ? snap : "-"),
	       from_chunk);

	ix = index_current(stream);
	if (!ix) {
		log_at(LVL_ERROR, "cannot serve a snapshot; resync request not answered",
		       "tenant=%s store=%s device=%s stream=%s", id.tenant, id.store, id.device,
		       cache_streams[stream]);
		goto cleanup;
	}
	if (snap && strcmp(snap, ix->id) == 0 && from_chunk >= 0 && from_chunk < ix->nchunks) {
		start = from_chunk;
	} else if (snap) {
		/* The agent drops what it holds when chunk 0 of another id arrives. */
		log_at(LVL_INFO, "requested snapshot cannot be resumed; sending a new one",
		       "tenant=%s store=%s device=%s requested=%s from_chunk=%" PRId64
		       " current=%s chunks=%" PRId64,
		       id.tenant, id.store, id.device, lq(q2, sizeof q2, snap), from_chunk, ix->id,
		       ix->nchunks);
	}
	job_start(&id, ix, start);

cleanup:
	cJSON_Delete(root);
}
