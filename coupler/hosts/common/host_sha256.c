/* SHA-256 of a file or an ensemble directory, so every result.json names exactly which
 * configuration and which model produced it (compare with `sha256sum`). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

/* The digest itself is OpenSSL's (libcrypto's EVP interface): a provenance hash is no place for
 * an implementation of one's own. */
static int sha256_stream(FILE *fp, char *hex) {
  unsigned char buf[1 << 16], md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0, i;
  size_t n;
  int ok;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx) return -1;
  ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
  while (ok && (n = fread(buf, 1, sizeof buf, fp)) > 0) ok = EVP_DigestUpdate(ctx, buf, n) == 1;
  ok = ok && !ferror(fp) && EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len == 32;
  EVP_MD_CTX_free(ctx);
  if (!ok) return -1;
  for (i = 0; i < md_len; i++) sprintf(hex + 2 * i, "%02x", md[i]);
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory (an ensemble) hashes as the SHA-256 of the lines "<sha256>  <name>" of its
 * *.colnn files in name order (what `sha256sum *.colnn | sha256sum` gives). */
static int sha256_dir(const char *path, char *hex) {
  DIR *d = opendir(path);
  struct dirent *e;
  char **names = NULL, *full, member[65];
  size_t n = 0, cap = 0, i, len;
  int rc = 0;
  FILE *mem;
  char *text = NULL;
  size_t text_len = 0;
  if (!d) return -1;
  while ((e = readdir(d)) != NULL) {
    len = strlen(e->d_name);
    if (len < 7 || strcmp(e->d_name + len - 6, ".colnn") != 0) continue;
    if (n == cap) {
      char **grown = realloc(names, (cap = cap ? 2 * cap : 16) * sizeof *names);
      if (!grown) { rc = -1; break; }
      names = grown;
    }
    if (!(names[n] = strdup(e->d_name))) { rc = -1; break; }
    n++;
  }
  closedir(d);
  if (rc == 0) qsort(names, n, sizeof *names, cmp_names);
  mem = rc == 0 ? open_memstream(&text, &text_len) : NULL;
  if (!mem) rc = -1;
  for (i = 0; i < n && rc == 0; i++) {
    full = malloc(strlen(path) + strlen(names[i]) + 2);
    if (!full) { rc = -1; break; }
    sprintf(full, "%s/%s", path, names[i]);
    FILE *fp = fopen(full, "rb");
    free(full);
    if (!fp || sha256_stream(fp, member) != 0) { if (fp) fclose(fp); rc = -1; break; }
    fclose(fp);
    fprintf(mem, "%s  %s\n", member, names[i]);
  }
  for (i = 0; i < n; i++) free(names[i]);
  free(names);
  if (mem) fclose(mem);
  if (rc == 0) {
    mem = fmemopen(text, text_len, "rb");
    if (!mem || text_len == 0) rc = -1;
    else rc = sha256_stream(mem, hex);
    if (mem) fclose(mem);
  }
  free(text);
  return rc;
}

/* hex: 65 bytes (64 hex digits + NUL). Returns 0, or -1 when the path cannot be read. */
int host_sha256_file(const char *path, char *hex) {
  struct stat st;
  FILE *fp;
  int rc;
  hex[0] = '\0';
  if (stat(path, &st) != 0) return -1;
  if (S_ISDIR(st.st_mode)) return sha256_dir(path, hex);
  if (!(fp = fopen(path, "rb"))) return -1;
  rc = sha256_stream(fp, hex);
  fclose(fp);
  return rc;
}

/* rename(2): the atomic last step of writing result.json and the diagnostics. */
int host_rename(const char *from, const char *to) { return rename(from, to) == 0 ? 0 : -1; }
