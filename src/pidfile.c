#include "td/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "td/common-t.h"

int td_pidfile_write(const char *path, char *err, size_t errlen) {
    char *tmp = malloc(strlen(path) + sizeof ".tmp-XXXXXX");
    char text[32];
    int fd = -1, n = snprintf(text, sizeof text, "%ld\n", (long)getpid());

    if (!tmp) {
        snprintf(err, errlen, "%s: cannot write: out of memory", path);
        return TD_EIO;
    }
    strcat(strcpy(tmp, path), ".tmp-XXXXXX");
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        goto fail;
    int ok = fchmod(fd, 0644) == 0 && write(fd, text, (size_t)n) == n;
    int saved = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    if (!ok) {
        unlink(tmp);
        errno = saved;
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        errno = saved;
        goto fail;
    }
    free(tmp);
    return 0;
fail:
    snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    free(tmp);
    return TD_EIO;
}

void td_pidfile_remove(const char *path) {
    char text[32] = "";
    FILE *f = fopen(path, "r");

    if (!f)
        return;
    if (!fgets(text, sizeof text, f))
        text[0] = 0;
    fclose(f);
    if (strtol(text, NULL, 10) == (long)getpid())
        unlink(path);
}
