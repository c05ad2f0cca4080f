/* Sorted list of the regular files in a directory whose names end in a suffix: Fortran has no
 * portable way to read a directory. Names are written newline-separated into buf. Returns the
 * number of names, -1 when the directory cannot be opened, -2 when buf is too small. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int compare(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int colnn_list_dir(const char *dir, const char *suffix, char *buf, size_t buflen) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  size_t cap = 64, n = 0, slen = strlen(suffix);
  char **names = malloc(cap * sizeof *names);
  struct dirent *e;
  int result = 0;
  while (names && (e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (e->d_name[0] == '.' || len <= slen || strcmp(e->d_name + len - slen, suffix) != 0) continue;
    if (n == cap) {
      char **grown = realloc(names, 2 * cap * sizeof *names);
      if (!grown) { result = -2; break; }
      names = grown;
      cap *= 2;
    }
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  if (!names) return -2;
  qsort(names, n, sizeof *names, compare);
  size_t used = 0;
  if (buflen > 0) buf[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(names[i]);
    if (result == 0 && used + len + 2 <= buflen) {
      memcpy(buf + used, names[i], len);
      used += len;
      buf[used++] = '\n';
      buf[used] = '\0';
    } else {
      result = -2;
    }
    free(names[i]);
  }
  free(names);
  return result == 0 ? (int)n : result;
}
