/* Writes a whole buffer to a new file and makes sure it reached the file system: every write(2)
 * is checked, then fsync and close. libgfortran 12 reports success for buffered writes, flush
 * and close on a full disk (ENOSPC is dropped), so files that must never be truncated silently
 * are written through here. Returns 0, or -1 with the reason (strerror) in err; a file that
 * could not be written whole is removed. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int colnn_write_file(const char *path, const char *buf, long long n, char *err, int errlen) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    snprintf(err, (size_t)errlen, "%s", strerror(errno));
    return -1;
  }
  long long done = 0;
  int failed = 0;
  while (done < n) {
    ssize_t w = write(fd, buf + done, (size_t)(n - done));
    if (w < 0) {
      if (errno == EINTR) continue;
      failed = errno;
      break;
    }
    done += w;
  }
  if (!failed && fsync(fd) != 0 && errno != EINVAL && errno != EROFS) failed = errno;
  if (close(fd) != 0 && !failed) failed = errno;
  if (failed) {
    snprintf(err, (size_t)errlen, "%s", strerror(failed));
    unlink(path);
    return -1;
  }
  return 0;
}
