!> What every toy host shares: the run outcome and its atomic result.json, file hashes, wall
!> clock, and the strict reading of the namelist file (unknown groups are errors, not defaults).
module host_common
  use, intrinsic :: iso_fortran_env, only: dp => real64, i8 => int64, error_unit
  use, intrinsic :: iso_c_binding, only: c_char, c_int, c_null_char
  use colnn_textio, only: text_writer_t
  implicit none
  private

  public :: injected_value, is_injectable, ieee_nan, is_finite, last, mean_finite, max_finite
  public :: dp, i8, run_result_t, write_result, finish_run, hash_file, wall_clock, check_groups, itoa, &
            rtoa, ftoa, atomic_rename, host_uniform, host_normal

  !> One entry of result.json's "extra" object.
  type :: named_value_t
    character(len=:), allocatable :: name
    real(dp) :: value = 0
  end type named_value_t

  !> One coupled or truth run, as result.json records it. status: 'completed' (step limit
  !> reached), 'failed' (a failure criterion fired at failure_step), 'error' (the run could not
  !> start or the host could not go on: bad configuration, unreadable files, unwritable output).
  type :: run_result_t
    character(len=32) :: host = '', mode = '', closure = ''
    character(len=16) :: status = 'error'
    integer :: steps = 0            !< steps taken (the failing step included)
    integer :: max_steps = 0
    integer :: failure_step = -1    !< -1: none
    character(len=32) :: reason = '', variable = ''
    character(len=1024) :: message = ''
    real(dp) :: wall_s = 0, nn_s = 0, dynamics_s = 0, io_s = 0
    character(len=64) :: config_hash = '', model_hash = ''
    integer(i8) :: seed = 0
    integer :: n_columns = 0, n_ranks = 1
    character(len=256) :: diagnostics = ''
    !> host-specific figures, result.json's "extra" (as many as the host records)
    integer :: n_extra = 0
    type(named_value_t), allocatable :: extras(:)
  contains
    procedure :: add_extra => run_result_add_extra
    procedure :: clear_extras => run_result_clear_extras
  end type run_result_t

  interface
    integer(c_int) function c_sha256_file(path, hex) bind(C, name='host_sha256_file')
      import :: c_char, c_int
      character(kind=c_char), intent(in) :: path(*)
      character(kind=c_char), intent(out) :: hex(65)
    end function c_sha256_file
    integer(c_int) function c_rename(from, to) bind(C, name='host_rename')
      import :: c_char, c_int
      character(kind=c_char), intent(in) :: from(*), to(*)
    end function c_rename
  end interface

  integer(i8), parameter :: M32 = 4294967295_i8

contains

  !> a * b mod 2^32 for a, b < 2^32 without leaving int64.
  pure integer(i8) function mul32(a, b)
    integer(i8), intent(in) :: a, b
    mul32 = iand(iand(shiftr(a, 16) * b, 65535_i8) * 65536_i8 + iand(a, 65535_i8) * b, M32)
  end function mul32

  pure integer(i8) function hash32(x0)
    integer(i8), intent(in) :: x0
    integer(i8) :: x
    x = iand(x0, M32)
    x = ieor(x, shiftr(x, 16)); x = mul32(x, 2146121005_i8)
    x = ieor(x, shiftr(x, 15)); x = mul32(x, 2221713035_i8)
    hash32 = ieor(x, shiftr(x, 16))
  end function hash32

  !> Uniform in (0, 1), a pure function of (seed, stream, index): initial states that do not
  !> depend on the compiler, the precision build or the decomposition over ranks.
  pure real(dp) function host_uniform(seed, stream, index)
    integer(i8), intent(in) :: seed, stream, index
    integer(i8) :: h, h2
    h = hash32(ieor(hash32(ieor(hash32(iand(seed, M32)), shiftr(seed, 32))), stream))
    h = hash32(ieor(h, iand(index, M32)))
    h2 = hash32(ieor(h, shiftr(index, 32) + 1013904223_i8))
    host_uniform = (real(h, dp) * 4294967296.0_dp + real(h2, dp) + 0.5_dp) / 18446744073709551616.0_dp
  end function host_uniform

  !> Standard normal (Box-Muller on two keyed uniforms).
  pure real(dp) function host_normal(seed, stream, index)
    integer(i8), intent(in) :: seed, stream, index
    real(dp) :: u1, u2
    u1 = host_uniform(seed, stream, 2 * index)
    u2 = host_uniform(seed, stream, 2 * index + 1)
    host_normal = sqrt(-2 * log(u1)) * cos(2 * acos(-1.0_dp) * u2)
  end function host_normal

  !> Hex SHA-256 of a file's bytes ('' when it cannot be read).
  function hash_file(path) result(hex)
    character(len=*), intent(in) :: path
    character(len=64) :: hex
    character(kind=c_char) :: buf(65)
    integer :: i
    hex = ''
    if (c_sha256_file(trim(path)//c_null_char, buf) /= 0) return
    do i = 1, 64
      hex(i:i) = buf(i)
    end do
  end function hash_file

  subroutine atomic_rename(from, to, stat)
    character(len=*), intent(in) :: from, to
    integer, intent(out) :: stat
    stat = c_rename(trim(from)//c_null_char, trim(to)//c_null_char)
  end subroutine atomic_rename

  real(dp) function wall_clock()
    integer(i8) :: count, rate
    call system_clock(count, rate)
    wall_clock = real(count, dp) / real(rate, dp)
  end function wall_clock

  pure function itoa(i) result(s)
    integer, intent(in) :: i
    character(len=:), allocatable :: s
    character(len=24) :: buf
    write (buf, '(i0)') i
    s = trim(buf)
  end function itoa

  !> Shortest round-tripping text of a double; JSON has no NaN/Inf, so those become null.
  function rtoa(x) result(s)
    real(dp), intent(in) :: x
    character(len=:), allocatable :: s
    character(len=32) :: buf
    if (x /= x .or. abs(x) > huge(x)) then
      s = 'null'
      return
    end if
    write (buf, '(es24.16e3)') x
    s = trim(adjustl(buf))
  end function rtoa

  !> A double for messages (5 significant digits).
  function ftoa(x) result(s)
    real(dp), intent(in) :: x
    character(len=:), allocatable :: s
    character(len=32) :: buf
    write (buf, '(g0.5)') x
    s = trim(adjustl(buf))
  end function ftoa

  function jstr(s) result(out)
    character(len=*), intent(in) :: s
    character(len=:), allocatable :: out
    integer :: i, c
    character(len=6) :: esc
    out = '"'
    do i = 1, len_trim(s)
      c = iachar(s(i:i))
      select case (c)
      case (34)
        out = out//'\"'
      case (92)
        out = out//'\\'
      case (0:31, 127:)
        write (esc, '(a,z4.4)') '\u', c
        out = out//esc
      case default
        out = out//s(i:i)
      end select
    end do
    out = out//'"'
  end function jstr

  function jstr_or_null(s) result(out)
    character(len=*), intent(in) :: s
    character(len=:), allocatable :: out
    if (len_trim(s) == 0) then
      out = 'null'
    else
      out = jstr(s)
    end if
  end function jstr_or_null

  !> The value a fault-injection test writes into the state: 'nan', 'inf' or '-inf'.
  real(dp) function injected_value(kind)
    use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan, ieee_positive_inf, &
                                             ieee_negative_inf
    character(len=*), intent(in) :: kind
    select case (trim(kind))
    case ('inf')
      injected_value = ieee_value(1.0_dp, ieee_positive_inf)
    case ('-inf')
      injected_value = ieee_value(1.0_dp, ieee_negative_inf)
    case ('nan')
      injected_value = ieee_value(1.0_dp, ieee_quiet_nan)
    case default
      injected_value = ieee_value(1.0_dp, ieee_quiet_nan)
      if (is_injectable(kind)) read (kind, *) injected_value
    end select
  end function injected_value

  !> nan, inf, -inf or a finite number (a value the network has never seen).
  logical function is_injectable(kind)
    character(len=*), intent(in) :: kind
    real(dp) :: x
    integer :: ios
    is_injectable = any(trim(kind) == [character(len=4) :: 'nan', 'inf', '-inf'])
    if (is_injectable .or. len_trim(kind) == 0) return
    if (verify(trim(kind), '0123456789+-.eEdD') /= 0) return
    read (kind, *, iostat=ios) x
    is_injectable = ios == 0 .and. is_finite(x)
  end function is_injectable

  !> A quiet NaN: "no value" in the diagnostics and extras (result.json writes it as null).
  real(dp) function ieee_nan()
    use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
    ieee_nan = ieee_value(1.0_dp, ieee_quiet_nan)
  end function ieee_nan

  !> Neither NaN nor infinite (a NaN compares false, so it fails the test).
  elemental logical function is_finite(x)
    real(dp), intent(in) :: x
    is_finite = abs(x) <= huge(1.0_dp)
  end function is_finite

  !> The last element, NaN for an empty array (a run that ended before its first record).
  real(dp) function last(a)
    real(dp), intent(in) :: a(:)
    if (size(a) == 0) then
      last = ieee_nan()
    else
      last = a(size(a))
    end if
  end function last

  !> The mean of the finite elements (a failed run's last record may be NaN); NaN when none is.
  real(dp) function mean_finite(a)
    real(dp), intent(in) :: a(:)
    logical :: ok(size(a))
    ok = is_finite(a)
    if (count(ok) == 0) then
      mean_finite = ieee_nan()
    else
      mean_finite = sum(a, mask=ok) / count(ok)
    end if
  end function mean_finite

  !> The largest finite element; NaN when none is.
  real(dp) function max_finite(a)
    real(dp), intent(in) :: a(:)
    logical :: ok(size(a))
    ok = is_finite(a)
    if (count(ok) == 0) then
      max_finite = ieee_nan()
    else
      max_finite = maxval(a, mask=ok)
    end if
  end function max_finite

  !> Records one host-specific figure (result.json "extra"); the list grows as needed.
  subroutine run_result_add_extra(self, name, value)
    class(run_result_t), intent(inout) :: self
    character(len=*), intent(in) :: name  !! its key in result.json
    real(dp), intent(in) :: value
    type(named_value_t), allocatable :: grown(:)
    if (.not. allocated(self%extras)) allocate (self%extras(16))
    if (self%n_extra == size(self%extras)) then
      allocate (grown(2 * size(self%extras)))
      grown(1:self%n_extra) = self%extras
      call move_alloc(grown, self%extras)
    end if
    self%n_extra = self%n_extra + 1
    self%extras(self%n_extra) = named_value_t(name, value)
  end subroutine run_result_add_extra

  subroutine run_result_clear_extras(self)
    class(run_result_t), intent(inout) :: self
    self%n_extra = 0
  end subroutine run_result_clear_extras

  !> Writes result.json through a temporary file and rename(2): a reader sees the old file or
  !> the complete new one, never a partial one.
  subroutine write_result(path, r, stat, errmsg)
    character(len=*), intent(in) :: path
    type(run_result_t), intent(in) :: r
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    character(len=:), allocatable :: tmp, fail, why
    type(text_writer_t) :: text
    integer :: i
    errmsg = ''
    tmp = trim(path)//'.tmp'
    if (r%failure_step >= 0) then
      fail = itoa(r%failure_step)
    else
      fail = 'null'
    end if
    call text%add('{' // &
      nl('schema')//'1,' // &
      nl('host')//jstr(r%host)//',' // &
      nl('mode')//jstr(r%mode)//',' // &
      nl('closure')//jstr_or_null(r%closure)//',' // &
      nl('status')//jstr(r%status)//',' // &
      nl('steps')//itoa(r%steps)//',' // &
      nl('max_steps')//itoa(r%max_steps)//',' // &
      nl('failure_step')//fail//',' // &
      nl('reason')//jstr_or_null(r%reason)//',' // &
      nl('variable')//jstr_or_null(r%variable)//',' // &
      nl('message')//jstr(r%message)//',' // &
      nl('wall_time_s')//rtoa(r%wall_s)//',' // &
      nl('nn_time_s')//rtoa(r%nn_s)//',' // &
      nl('dynamics_time_s')//rtoa(r%dynamics_s)//',' // &
      nl('io_time_s')//rtoa(r%io_s)//',' // &
      nl('config_hash')//jstr_or_null(r%config_hash)//',' // &
      nl('model_hash')//jstr_or_null(r%model_hash)//',' // &
      nl('seed')//itoa(int(r%seed))//',' // &
      nl('n_columns')//itoa(r%n_columns)//',' // &
      nl('n_ranks')//itoa(r%n_ranks)//',' // &
      nl('diagnostics')//jstr_or_null(r%diagnostics)//',')
    call text%add('  "extra": {')
    do i = 1, r%n_extra
      call text%add('    '//jstr(r%extras(i)%name)//': '// &
                    rtoa(r%extras(i)%value)//trim(merge(', ', '  ', i < r%n_extra)))
    end do
    call text%add('  }'//new_line('a')//'}')
    ! one stream write: libgfortran 12's formatted writes report success on a full disk
    call text%save(tmp, trim(path), stat, why)
    if (stat /= 0) then
      errmsg = why
      return
    end if
    call atomic_rename(tmp, path, stat)
    if (stat /= 0) errmsg = 'cannot rename '//tmp//' to '//trim(path)
  contains
    function nl(key) result(s)
      character(len=*), intent(in) :: key
      character(len=:), allocatable :: s
      s = new_line('a')//'  "'//key//'": '
    end function nl
  end subroutine write_result

  !> The end of every host run: rank 0 writes output_dir/result.json and one line to stderr.
  !> With errmsg the run is an 'error'. exit_code: 0 when the run completed or failed (the
  !> outcome is the result), 1 on an error or when result.json cannot be written.
  subroutine finish_run(prog, output_dir, rank, r, exit_code, errmsg)
    character(len=*), intent(in) :: prog, output_dir
    integer, intent(in) :: rank
    type(run_result_t), intent(inout) :: r
    integer, intent(out) :: exit_code
    character(len=*), intent(in), optional :: errmsg
    character(len=512) :: msg
    integer :: stat
    if (present(errmsg)) then
      r%status = 'error'
      r%message = errmsg
    end if
    exit_code = merge(1, 0, r%status == 'error')
    if (rank /= 0) return
    if (r%status == 'error') write (error_unit, '(a)') prog//': error: '//trim(r%message)
    if (len_trim(output_dir) == 0) return
    call write_result(trim(output_dir)//'/result.json', r, stat, msg)
    if (stat /= 0) then
      write (error_unit, '(a)') prog//': '//trim(msg)
      exit_code = 1
    else if (r%status == 'failed') then
      write (error_unit, '(a)') prog//': failed at step '//itoa(r%steps)//' ('// &
        trim(r%reason)//': '//trim(r%message)//')'
    else if (r%status == 'completed') then
      write (error_unit, '(a)') prog//': completed after '//itoa(r%steps)//' steps'
    end if
  end subroutine finish_run

  !> Every namelist group in the file must be one of `allowed` (a misspelt group would otherwise
  !> leave its settings silently at their defaults).
  subroutine check_groups(path, allowed, stat, errmsg, found)
    character(len=*), intent(in) :: path
    character(len=*), intent(in) :: allowed(:)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    logical, intent(out), optional :: found(:)   !< which of `allowed` the file has
    character(len=4096) :: line
    character(len=512) :: iomsg
    character(len=64) :: group
    integer :: u, ios, lineno, i, j
    errmsg = ''
    if (present(found)) found = .false.
    open (newunit=u, file=path, status='old', action='read', iostat=stat, iomsg=iomsg)
    if (stat /= 0) then
      errmsg = 'cannot open '//trim(path)//': '//trim(iomsg)
      return
    end if
    lineno = 0
    do
      read (u, '(a)', iostat=ios) line
      if (ios /= 0) exit
      lineno = lineno + 1
      line = adjustl(line)
      if (line(1:1) /= '&' .or. line(1:4) == '&end') cycle
      j = scan(line(2:), ' /,'//achar(9))
      if (j == 0) j = len_trim(line)
      group = line(2:j)
      do i = 1, len(group)
        if (group(i:i) >= 'A' .and. group(i:i) <= 'Z') group(i:i) = achar(iachar(group(i:i)) + 32)
      end do
      if (.not. any(allowed == group)) then
        stat = 1
        errmsg = trim(path)//':'//itoa(lineno)//': unknown namelist group &'//trim(group)// &
                 ' (this host reads: '//join(allowed)//')'
        close (u)
        return
      end if
      if (present(found)) where (allowed == group) found = .true.
    end do
    close (u)
    stat = 0
  contains
    function join(words) result(s)
      character(len=*), intent(in) :: words(:)
      character(len=:), allocatable :: s
      integer :: k
      s = ''
      do k = 1, size(words)
        s = s//'&'//trim(words(k))
        if (k < size(words)) s = s//' '
      end do
    end function join
  end subroutine check_groups
end module host_common
