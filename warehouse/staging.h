/*
 * Staging files: one table's rows as an Avro object container file (deflate codec), written
 * once by the warehouse role and streamed back by the loader. Any Avro reader can read them.
 *
 * Schema: a record named after the table (made Avro-safe) with one field per column, in the
 * order the columns were first seen in the rows, each a union ["null", T] with int -> long,
 * float -> double, boolean -> boolean, datetime/string/json -> string. Fields carry the
 * column's warehouse type ("sluice_type") and original name ("sluice_column") as attributes,
 * and the record the table's name ("sluice_table"); the header's metadata holds the row count
 * ("sluice.rows"), so a file cut short at a block boundary is still caught.
 *
 * A column whose rows gave values of different types (an int in one event, a string in the
 * next, or a value whose text doesn't parse as its type) is stored as string ("sluice_mixed")
 * with the first type seen as its type (float when its values are only ints and floats); each
 * row's own types for such columns are kept in one extra string field ("sluice_role":
 * "row_types"), so the loader converts each value from the type it really had
 * (wh_staging_row_types()).
 *
 * Functions may be called from any thread; a reader is used by one thread at a time.
 */
#ifndef WH_STAGING_H
#define WH_STAGING_H

#include <stddef.h>

#include "warehouse/schema.h"

/*
 * Writes rows[0..n) of table to an Avro file at path: to path.tmp first, fsync'd, renamed to
 * path, and the directory fsync'd, so path is either absent or complete after a crash. The
 * directory must exist. rows and their strings are borrowed for the call; rows[i]->table is
 * not read. n may be 0 (a file with no columns and no rows). Returns 0, or SL_ERR_INVALID
 * (bad arguments), SL_ERR_NOTFOUND (no such directory), SL_ERR_TRANSIENT (an I/O error such
 * as a full disk) or SL_ERR_FATAL, with errstr filled; path.tmp is removed on error.
 */
int wh_staging_write(const char *path, const char *table, const wh_row_t *const *rows, size_t n,
                     char *errstr, size_t errstr_size);

/* Row i (0 <= i < n) of a wh_staging_write_fn() call; see there for how long it must last. */
typedef const wh_row_t *(*wh_staging_row_fn)(void *opaque, size_t i);

/*
 * wh_staging_write() with the rows from row_at(opaque, i) instead of an array, so a caller
 * holding its rows in another form need not copy them all first: the writer asks for each row
 * twice (once for the columns' types, once to write it), in order. The wh_row_t returned and
 * its cols need only last until the next call; the strings they point to (names and values)
 * must last until wh_staging_write_fn() returns. Same results as wh_staging_write().
 */
int wh_staging_write_fn(const char *path, const char *table, wh_staging_row_fn row_at, void *opaque,
                        size_t n, char *errstr, size_t errstr_size);

typedef struct wh_staging_reader wh_staging_reader_t;

/*
 * Opens a staging file for streaming (one block of rows in memory at a time). It first walks
 * the block headers and sync markers (seeking over the data), so a file cut short, even at a
 * block boundary (the row count in the header tells), is refused here rather than halfway
 * through a load. Returns a reader (free with wh_staging_close()) or NULL with errstr: the file
 * is missing (errno is then ENOENT, so a caller can answer SL_ERR_NOTFOUND; else EINVAL), not
 * an Avro container, truncated, or its schema is not one this module writes (a field that is
 * not a union of null and long/double/boolean/string, or whose type disagrees with its
 * sluice_type: "schema mismatch"). Files of other Avro writers are read when they have that
 * shape (types then come from the Avro types).
 */
wh_staging_reader_t *wh_staging_open(const char *path, char *errstr, size_t errstr_size);

/* The file's columns: *names (original spellings) and *types, both arrays of the returned
 * count, owned by r. Either pointer may be NULL. */
size_t wh_staging_columns(wh_staging_reader_t *r, const char *const **names,
                          const wh_type_t **types);

/* The table the file was written for (original spelling). Owned by r. */
const char *wh_staging_table(wh_staging_reader_t *r);

/*
 * The next row: *values[i] is column i's value as text, or NULL for NULL. Ints print as
 * decimal, floats with the fewest of 15, 16 or 17 significant digits that read back as the
 * same double ("0.1", "1e+300", "0.30000000000000004"), booleans as "true"/"false". values stay
 * valid until the next call or close. Returns 1 for a row, 0 at the end (and after), or
 * SL_ERR_INVALID with errstr when a block is corrupt (Avro's deflate has no checksum, so not
 * every damaged byte is noticed); after an error every call fails the same way.
 */
int wh_staging_next(wh_staging_reader_t *r, const char *const **values, char *errstr,
                    size_t errstr_size);

/* The current row's type of each column's value (see the top): the column's type, except in
 * mixed columns. Owned by r, valid until the next wh_staging_next(). */
const wh_type_t *wh_staging_row_types(wh_staging_reader_t *r);

/* Closes the file and frees r (NULL is fine). */
void wh_staging_close(wh_staging_reader_t *r);

/*
 * For benchmarks: writes n synthetic rows of 16 columns (tracks-like) to a file in dir, reads
 * them back, removes the file and stores rows per second of each in *write_rps and *read_rps.
 * Prints nothing. Returns 0 or an error of wh_staging_write/_open/_next with errstr.
 */
int wh_staging_bench(const char *dir, size_t n, double *write_rps, double *read_rps, char *errstr,
                     size_t errstr_size);

#endif
