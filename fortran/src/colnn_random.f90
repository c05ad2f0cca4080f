!> Counter-based Gaussian noise: each value is a pure function of (seed, member, call, column,
!> feature), so results do not depend on threads, on the order members finish, or on how
!> columns are split over MPI ranks (given the global column index).
module colnn_random
  use colnn_kinds, only: wp, dp, i8
  implicit none
  private

  public :: add_gaussian_noise, dropout_mask, uniform_keys

  integer(i8), parameter :: M32 = 4294967295_i8
  real(dp), parameter :: TWO_PI = 6.283185307179586476925286766559_dp

contains

  !> (a * b) mod 2**32 for a, b in [0, 2**32), without overflowing 64-bit signed integers.
  pure integer(i8) function mul32(a, b)
    integer(i8), intent(in) :: a, b
    integer(i8) :: alo, ahi
    alo = iand(a, 65535_i8)
    ahi = ishft(a, -16)
    mul32 = iand(alo * b + ishft(iand(ahi * iand(b, 65535_i8), 65535_i8), 16), M32)
  end function mul32

  !> A 32-bit integer hash with good avalanche (xor-shift-multiply rounds).
  pure integer(i8) function hash32(x0)
    integer(i8), intent(in) :: x0
    integer(i8) :: x
    x = iand(x0, M32)
    x = ieor(x, ishft(x, -16))
    x = mul32(x, 2146121005_i8)     ! 0x7feb352d
    x = ieor(x, ishft(x, -15))
    x = mul32(x, 2221713035_i8)     ! 0x846ca68b
    hash32 = ieor(x, ishft(x, -16))
  end function hash32

  pure integer(i8) function mix(h, v)
    integer(i8), intent(in) :: h, v
    mix = hash32(ieor(h, hash32(iand(v, M32) + 2654435769_i8)))
  end function mix

  pure integer(i8) function mix64(h, v)
    integer(i8), intent(in) :: h, v
    mix64 = mix(mix(h, iand(v, M32)), ishft(v, -32))
  end function mix64

  !> xn(:, j) = x(:, j) + sd * z, z standard normal from the key (seed, member, call, col0 + j).
  subroutine add_gaussian_noise(seed, member, call, col0, n, nc, sd, x, xn)
    integer(i8), intent(in) :: seed, call, col0
    integer, intent(in) :: member, n, nc
    real(wp), intent(in) :: sd(n)
    real(wp), intent(in) :: x(:, :)
    real(wp), intent(out) :: xn(n, nc)
    integer(i8) :: kmember, kcol, h1, h2
    integer :: i, j
    real(dp) :: u1, u2, r, t
    kmember = mix64(mix64(mix(0_i8, int(member, i8)), seed), call)
    do j = 1, nc
      kcol = mix64(kmember, col0 + j - 1)
      do i = 1, n, 2
        h1 = hash32(kcol + 2 * i)
        h2 = hash32(ieor(kcol, 1779033703_i8) + 2 * i + 1)
        u1 = (real(h1, dp) + 0.5_dp) / 4294967296.0_dp
        u2 = (real(h2, dp) + 0.5_dp) / 4294967296.0_dp
        r = sqrt(-2 * log(u1))
        t = TWO_PI * u2
        xn(i, j) = x(i, j) + sd(i) * real(r * cos(t), wp)
        if (i < n) xn(i + 1, j) = x(i + 1, j) + sd(i + 1) * real(r * sin(t), wp)
      end do
    end do
  end subroutine add_gaussian_noise

  !> mask(i, j) = 1 / (1 - rate) with probability 1 - rate, else 0 (inverted dropout, as Keras),
  !> a pure function of (seed, call, j, i).
  subroutine dropout_mask(seed, call, n, nc, rate, mask)
    integer(i8), intent(in) :: seed, call
    integer, intent(in) :: n, nc
    real(wp), intent(in) :: rate
    real(wp), intent(out) :: mask(n, nc)
    integer(i8) :: key, kcol
    integer :: i, j
    real(wp) :: keep
    keep = 1 / (1 - rate)
    key = mix64(mix64(mix(0_i8, 977_i8), seed), call)
    do j = 1, nc
      kcol = mix(key, int(j, i8))
      do i = 1, n
        if ((real(hash32(kcol + i), dp) + 0.5_dp) / 4294967296.0_dp < rate) then
          mask(i, j) = 0
        else
          mask(i, j) = keep
        end if
      end do
    end do
  end subroutine dropout_mask

  !> keys(i) uniform in [0, 1), a pure function of (seed, stream, i).
  subroutine uniform_keys(seed, stream, keys)
    integer(i8), intent(in) :: seed, stream
    real(wp), intent(out) :: keys(:)
    integer(i8) :: key
    integer :: i
    key = mix64(mix64(mix(0_i8, 1234567_i8), seed), stream)
    do i = 1, size(keys)
      keys(i) = real(real(mix(key, int(i, i8)), dp) / 4294967296.0_dp, wp)
      if (keys(i) >= 1) keys(i) = nearest(1.0_wp, -1.0_wp)
    end do
  end subroutine uniform_keys
end module colnn_random
