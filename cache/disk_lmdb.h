/* disk_lmdb.h — LMDB's own file layout, as much of it as disk.c reads without LMDB: the page
 * header and the two meta pages at the start of data.mdb (private to the cache library and its
 * tests).
 *
 * LMDB does not checksum its pages and does not compare the file's size with what its meta page
 * says, so a truncated data.mdb faults (SIGBUS) on the first read past its end and a damaged tree
 * page can make it read or copy out of bounds. disk.c reads the meta pages itself with pread()
 * before LMDB maps the file, and the integrity walk checks the header of every leaf page it
 * passes. These structs mirror LMDB 0.9's (mdb.c: MDB_page, MDB_db, MDB_meta; the format has
 * been the same since 0.9.0, MDB_DATA_VERSION 1) field for field, on a 64-bit host, where
 * pgno_t, size_t and txnid_t are 8 bytes; disk.c asserts the offsets.
 */
#ifndef PREFIXD_CACHE_DISK_LMDB_H
#define PREFIXD_CACHE_DISK_LMDB_H

#include <stdint.h>

#define LMDB_MAGIC 0xBEEFC0DEu    /* MDB_MAGIC */
#define LMDB_DATA_VERSION 1       /* MDB_DATA_VERSION */
#define LMDB_PAGE_HDR 16          /* PAGEHDRSZ: the header before a page's contents */
#define LMDB_META_PAGES 2         /* pages 0 and 1 are the two meta pages, written in turn */
#define LMDB_P_BRANCH 0x01        /* mp_flags: a branch page (keys and child page numbers) */
#define LMDB_P_LEAF 0x02          /* a leaf page (keys and values or overflow page numbers) */
#define LMDB_P_OVERFLOW 0x04      /* the first page of a value too large for a leaf */
#define LMDB_P_META 0x08          /* a meta page */
#define LMDB_P_LEAF2 0x20         /* a leaf of fixed-size keys (MDB_DUPFIXED; we have none) */
#define LMDB_P_INVALID UINT64_MAX /* a page number that means "none" (an empty tree's root) */

/* Every page starts with this header (MDB_page). */
typedef struct lmdb_page_hdr {
    uint64_t pgno;  /* 0: the page's own number (offset / page size) */
    uint16_t pad;   /* 8 */
    uint16_t flags; /* 10: LMDB_P_* */
    union {
        struct {
            uint16_t lower; /* 12: end of the node offsets (16 + 2 x nodes) */
            uint16_t upper; /* 14: start of the node data (grows down from the page's end) */
        } span;
        uint32_t overflow_pages; /* 12: an overflow value's page count, header included */
    } u;
} lmdb_page_hdr;

/* One tree's record (MDB_db): the free list's and the main tree's are in the meta page. */
typedef struct lmdb_db {
    uint32_t pad;   /* 0: in the free list's record: the page size */
    uint16_t flags; /* 4 */
    uint16_t depth; /* 6 */
    uint64_t branch_pages, leaf_pages, overflow_pages, entries;
    uint64_t root; /* 40: the root page number, LMDB_P_INVALID if empty */
} lmdb_db;

/* The meta record (MDB_meta), at offset LMDB_PAGE_HDR of pages 0 and 1. The one with the larger
 * txnid is the current one; the other is the previous commit's. */
typedef struct lmdb_meta {
    uint32_t magic;   /* 0: LMDB_MAGIC */
    uint32_t version; /* 4: LMDB_DATA_VERSION */
    uint64_t address; /* 8: fixed map address (unused) */
    uint64_t mapsize; /* 16: the map size of the environment's last writer */
    lmdb_db dbs[2];   /* 24: [0] the free list (dbs[0].pad: page size), [1] the main tree */
    uint64_t last_pg; /* 120: the last page in use: the file holds at least last_pg + 1 pages */
    uint64_t txnid;   /* 128: the transaction that wrote this meta */
} lmdb_meta;

#endif
