/* arena.c — large buffers in 2 MiB pages: the K/V block pool, the spill buffer, the packed
 * weights. Transparent huge pages are asked for with madvise() (the kernel may refuse; the
 * buffer works the same, only slower to walk). */
#include "base.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)

size_t base_huge_round(size_t bytes)
{
    if (bytes > (size_t)-1 - HUGE_PAGE)
        return 0;
    return (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
}

void *base_huge_alloc(size_t bytes, int touch)
{
    size_t n = base_huge_round(bytes ? bytes : 1);
    if (n == 0)
        return NULL;
    void *p = aligned_alloc(HUGE_PAGE, n);
    if (!p)
        return NULL;
    madvise(p, n, MADV_HUGEPAGE);
    if (touch)
        memset(p, 0, n);
    return p;
}

void base_huge_free(void *p)
{
    free(p);
}
