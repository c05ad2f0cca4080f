/* SHA-256 (FIPS 180-4) of a file, so every result.json names exactly which configuration and
 * which model file produced it (compare with `sha256sum`). Written from the standard. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const uint32_t K[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void compress(uint32_t h[8], const unsigned char blk[64]) {
  uint32_t w[64], a, b, c, d, e, f, g, hh, t1, t2;
  int i;
  for (i = 0; i < 16; i++)
    w[i] = (uint32_t)blk[4 * i] << 24 | (uint32_t)blk[4 * i + 1] << 16 |
           (uint32_t)blk[4 * i + 2] << 8 | (uint32_t)blk[4 * i + 3];
  for (i = 16; i < 64; i++) {
    uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
  for (i = 0; i < 64; i++) {
    t1 = hh + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static int sha256_stream(FILE *fp, char *hex) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  unsigned char buf[64];
  uint64_t total = 0;
  size_t n;
  int i;
  hex[0] = '\0';
  while ((n = fread(buf, 1, 64, fp)) == 64) {
    compress(h, buf);
    total += 64;
  }
  if (ferror(fp)) return -1;
  total += n;
  buf[n++] = 0x80;
  if (n > 56) {
    memset(buf + n, 0, 64 - n);
    compress(h, buf);
    n = 0;
  }
  memset(buf + n, 0, 56 - n);
  for (i = 0; i < 8; i++) buf[56 + i] = (unsigned char)((total * 8) >> (56 - 8 * i));
  compress(h, buf);
  for (i = 0; i < 8; i++) sprintf(hex + 8 * i, "%08x", h[i]);
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
