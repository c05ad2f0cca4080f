!> Small string helpers: number formatting that round-trips, tokenizing, strict parsing.
module colnn_strings
  use colnn_kinds, only: sp, dp, wp, i8
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  implicit none
  private

  public :: str, real_to_str, lower, next_token, count_tokens, is_number_text, is_decimal
  public :: parse_int, parse_real_dp, parse_logical

  interface str
    module procedure str_int, str_i8
  end interface str

contains

  pure function str_int(i) result(s)
    integer, intent(in) :: i
    character(len=:), allocatable :: s
    character(len=24) :: buf
    write (buf, '(i0)') i
    s = trim(buf)
  end function str_int

  pure function str_i8(i) result(s)
    integer(i8), intent(in) :: i
    character(len=:), allocatable :: s
    character(len=24) :: buf
    write (buf, '(i0)') i
    s = trim(buf)
  end function str_i8

  !> Shortest ES representation (up to 17 digits) that reads back to the same value in
  !> working precision: attributes such as epsilon stay readable ("1E-03") and exact.
  function real_to_str(x) result(s)
    real(wp), intent(in) :: x
    character(len=:), allocatable :: s
    character(len=40) :: buf
    character(len=16) :: fmt
    real(wp) :: back
    integer :: d, ios
    do d = 1, 17
      write (fmt, '(a,i0,a,i0,a)') '(es', d + 8, '.', d - 1, 'e3)'
      write (buf, fmt) x
      read (buf, *, iostat=ios) back
      if (ios == 0 .and. back == x) exit
    end do
    s = trim(adjustl(buf))
  end function real_to_str

  pure function lower(s) result(t)
    character(len=*), intent(in) :: s
    character(len=len(s)) :: t
    integer :: i, c
    t = s
    do i = 1, len(s)
      c = iachar(s(i:i))
      if (c >= iachar('A') .and. c <= iachar('Z')) t(i:i) = achar(c + 32)
    end do
  end function lower

  pure logical function is_blank(c)
    character, intent(in) :: c
    is_blank = c == ' ' .or. c == achar(9) .or. c == achar(13)
  end function is_blank

  !> Finds the next blank-separated token of `line` at or after `pos`; on return `first:last`
  !> delimits it (last < first when there is none) and `pos` points past it.
  pure subroutine next_token(line, pos, first, last)
    character(len=*), intent(in) :: line
    integer, intent(inout) :: pos
    integer, intent(out) :: first, last
    integer :: n
    n = len(line)
    do while (pos <= n)
      if (.not. is_blank(line(pos:pos))) exit
      pos = pos + 1
    end do
    first = pos
    do while (pos <= n)
      if (is_blank(line(pos:pos))) exit
      pos = pos + 1
    end do
    last = pos - 1
  end subroutine next_token

  pure integer(i8) function count_tokens(line) result(n)
    character(len=*), intent(in) :: line
    integer :: pos, first, last
    n = 0
    pos = 1
    do
      call next_token(line, pos, first, last)
      if (last < first) exit
      n = n + 1
    end do
  end function count_tokens

  !> True when `s` is one decimal number: [+-] digits [. [digits]] or [+-] . digits, then an
  !> optional exponent [eE] [+-] digits ([dD] too with `allow_d`, for Fortran-written files).
  !> Stricter than a list-directed read, which takes '1+5' as 1e5, '1-2' as 0.01 and '/', ','
  !> or 'r*x' as separators and repeat counts.
  pure logical function is_decimal(s, allow_d)
    character(len=*), intent(in) :: s
    logical, intent(in) :: allow_d
    integer :: i, n, n_int, n_frac
    is_decimal = .false.
    n = len(s)
    i = 1
    if (n == 0) return
    if (s(1:1) == '+' .or. s(1:1) == '-') i = 2
    n_int = 0
    do while (i <= n)
      if (.not. is_digit(s(i:i))) exit
      n_int = n_int + 1
      i = i + 1
    end do
    n_frac = 0
    if (i <= n) then
      if (s(i:i) == '.') then
        i = i + 1
        do while (i <= n)
          if (.not. is_digit(s(i:i))) exit
          n_frac = n_frac + 1
          i = i + 1
        end do
      end if
    end if
    if (n_int + n_frac == 0) return
    if (i <= n) then
      select case (s(i:i))
      case ('e', 'E')
      case ('d', 'D')
        if (.not. allow_d) return
      case default
        return
      end select
      i = i + 1
      if (i <= n) then
        if (s(i:i) == '+' .or. s(i:i) == '-') i = i + 1
      end if
      if (i > n) return
      do while (i <= n)
        if (.not. is_digit(s(i:i))) return
        i = i + 1
      end do
    end if
    is_decimal = .true.
  end function is_decimal

  pure logical function is_digit(c)
    character, intent(in) :: c
    is_digit = c >= '0' .and. c <= '9'
  end function is_digit

  !> True when `s` holds one or more blank-separated decimal numbers (see is_decimal) and
  !> nothing else. Used before list-directed reads.
  pure logical function is_number_text(s, allow_d)
    character(len=*), intent(in) :: s
    logical, intent(in), optional :: allow_d
    integer :: pos, first, last
    logical :: d
    d = .false.
    if (present(allow_d)) d = allow_d
    is_number_text = .false.
    pos = 1
    do
      call next_token(s, pos, first, last)
      if (last < first) exit
      if (.not. is_decimal(s(first:last), d)) then
        is_number_text = .false.
        return
      end if
      is_number_text = .true.
    end do
  end function is_number_text

  subroutine parse_int(s, val, ok)
    character(len=*), intent(in) :: s
    integer(i8), intent(out) :: val
    logical, intent(out) :: ok
    integer :: ios, i
    ok = .false.
    val = 0
    if (len_trim(s) == 0 .or. len_trim(s) > 19) return
    do i = 1, len_trim(s)
      select case (s(i:i))
      case ('0':'9')
      case ('+', '-'); if (i /= 1) return
      case default; return
      end select
    end do
    read (s, *, iostat=ios) val
    ok = ios == 0
  end subroutine parse_int

  !> One decimal number (see is_decimal), blanks around it allowed, nothing else, finite in
  !> working precision.
  subroutine parse_real_dp(s, val, ok, allow_d)
    character(len=*), intent(in) :: s
    real(dp), intent(out) :: val
    logical, intent(out) :: ok
    logical, intent(in), optional :: allow_d
    integer :: ios
    logical :: d
    ok = .false.
    val = 0
    d = .false.
    if (present(allow_d)) d = allow_d
    if (.not. is_decimal(trim(adjustl(s)), d)) return
    read (s, *, iostat=ios) val
    ! callers keep the value in working precision: it must stay finite there too
    ok = ios == 0 .and. ieee_is_finite(val)
    if (ok) ok = abs(val) <= huge(1.0_wp)
  end subroutine parse_real_dp

  subroutine parse_logical(s, val, ok)
    character(len=*), intent(in) :: s
    logical, intent(out) :: val
    logical, intent(out) :: ok
    ok = .true.
    ! exactly as the format says (docs/model-format.md), as the Python reader reads it
    select case (trim(adjustl(s)))
    case ('true'); val = .true.
    case ('false'); val = .false.
    case default; val = .false.; ok = .false.
    end select
  end subroutine parse_logical
end module colnn_strings
