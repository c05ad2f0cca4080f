!> An ensemble of networks that agree on input and output sizes (architectures may differ):
!> forward returns the member mean and, on request, the spread (population standard deviation)
!> and each member's output. Optional Gaussian input noise per member, reproducible from
!> (seed, member, call counter, global column, feature). Members run on OpenMP threads when there
!> are at least as many members as threads, otherwise one after the other with each member's
!> column blocks on the threads. Every result is bitwise independent of the thread count.
module colnn_ensemble
  use, intrinsic :: iso_c_binding, only: c_char, c_int, c_size_t, c_null_char
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use colnn_kinds, only: wp, i8
  use colnn_status
  use colnn_strings, only: str
  use colnn_network, only: network_t, workspace_t
  use colnn_textio, only: text_reader_t
  use colnn_strings, only: next_token
  use colnn_random, only: add_gaussian_noise
  !$ use omp_lib, only: omp_get_max_threads, omp_in_parallel
  implicit none
  private

  public :: ensemble_t

  type :: path_t
    character(len=:), allocatable :: s
  end type path_t

  !> The work of one forward call: member workspaces, noisy inputs, member outputs. Arrays only
  !> grow, and a call uses their leading part, so a calling thread's scratch (thread-local)
  !> serves every ensemble and chunk size it sees without allocating again.
  type :: ensemble_scratch_t
    type(workspace_t), allocatable :: ws(:)          !< one per member
    real(wp), allocatable :: xn(:, :, :)             !< noisy inputs (n_inputs, nc, n_members)
    real(wp), allocatable :: yout(:, :, :)           !< member outputs (n_outputs, nc, n_members)
    integer, allocatable :: member_stat(:)
    character(len=512), allocatable :: member_msg(:)
  end type ensemble_scratch_t

  !> The scratch of the calling thread (OpenMP threadprivate: thread-local storage): host
  !> threads running one ensemble on different column chunks share nothing they write.
  type(ensemble_scratch_t), save :: thread_scratch
  !$omp threadprivate(thread_scratch)

  type :: ensemble_t
    integer :: n_members = 0, n_inputs = 0, n_outputs = 0
    type(network_t), allocatable :: members(:)
    type(path_t), allocatable :: paths(:)
    real(wp), allocatable :: noise_sd(:)     !< (n_inputs); all zero: no noise
    !> (n_inputs, n_members): each member's noise in raw input units (noise_sd itself, or
    !> noise_sd times the member's input normalization when the noise is in normalized units)
    real(wp), allocatable :: member_sd(:, :)
    logical :: noise_normalized = .false.
    logical :: has_noise = .false.
    integer(i8) :: seed = 0
    integer(i8) :: calls = 0                 !< forward calls so far (part of the noise key)
#ifndef _OPENMP
    type(ensemble_scratch_t) :: scratch      !< without OpenMP: one per ensemble
#endif
  contains
    procedure :: load_files => ensemble_load_files
    procedure :: load_dir => ensemble_load_dir
    procedure :: load_list => ensemble_load_list
    procedure :: set_noise => ensemble_set_noise
    procedure :: set_batch_invariant => ensemble_set_batch_invariant
    procedure :: forward => ensemble_forward
    procedure :: destroy => ensemble_destroy
    procedure :: is_loaded => ensemble_is_loaded
  end type ensemble_t

  interface
    function c_list_dir(dir, suffix, buf, buflen) bind(C, name='colnn_list_dir') result(n)
      import :: c_char, c_int, c_size_t
      character(kind=c_char), intent(in) :: dir(*), suffix(*)
      character(kind=c_char), intent(out) :: buf(*)
      integer(c_size_t), value :: buflen
      integer(c_int) :: n
    end function c_list_dir
  end interface

contains

  pure logical function ensemble_is_loaded(self)
    class(ensemble_t), intent(in) :: self
    ensemble_is_loaded = self%n_members > 0
  end function ensemble_is_loaded

  subroutine ensemble_destroy(self)
    class(ensemble_t), intent(inout) :: self
    integer :: m
    if (allocated(self%members)) then
      do m = 1, size(self%members)
        call self%members(m)%destroy()
      end do
      deallocate (self%members)
    end if
    if (allocated(self%paths)) deallocate (self%paths)
    if (allocated(self%noise_sd)) deallocate (self%noise_sd)
    if (allocated(self%member_sd)) deallocate (self%member_sd)
    self%n_members = 0
    self%n_inputs = 0
    self%n_outputs = 0
    self%has_noise = .false.
    self%calls = 0
  end subroutine ensemble_destroy

  !> Loads every member or none: on an error nothing stays loaded and `errmsg` names the member.
  subroutine ensemble_load_files(self, paths, stat, errmsg)
    class(ensemble_t), intent(inout) :: self
    type(path_t), intent(in) :: paths(:)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: m, n
    character(len=1024) :: msg
    call self%destroy()
    errmsg = ''
    stat = COLNN_OK
    n = size(paths)
    if (n < 1) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble: no member files'
      return
    end if
    allocate (self%members(n), self%paths(n))
    do m = 1, n
      self%paths(m)%s = paths(m)%s
      call self%members(m)%load(paths(m)%s, stat, msg)
      if (stat /= 0) then
        errmsg = 'ensemble member '//str(m)//': '//trim(msg)
        exit
      end if
      if (m > 1) then
        if (self%members(m)%n_inputs /= self%members(1)%n_inputs .or. &
            self%members(m)%n_outputs /= self%members(1)%n_outputs) then
          stat = COLNN_ERR_ARGUMENT
          errmsg = 'ensemble member '//paths(m)%s//' maps '//str(self%members(m)%n_inputs)// &
                   ' inputs to '//str(self%members(m)%n_outputs)//' outputs, but '// &
                   paths(1)%s//' maps '//str(self%members(1)%n_inputs)//' to '// &
                   str(self%members(1)%n_outputs)
          exit
        end if
      end if
    end do
    if (stat /= 0) then
      call self%destroy()
      return
    end if
    self%n_members = n
    self%n_inputs = self%members(1)%n_inputs
    self%n_outputs = self%members(1)%n_outputs
    allocate (self%noise_sd(self%n_inputs), self%member_sd(self%n_inputs, n))
    self%noise_sd = 0
    self%member_sd = 0
  end subroutine ensemble_load_files

  !> Members are the files ending in `suffix` (default '.colnn') in `dir`, in name order.
  subroutine ensemble_load_dir(self, dir, stat, errmsg, suffix)
    class(ensemble_t), intent(inout) :: self
    character(len=*), intent(in) :: dir
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    character(len=*), intent(in), optional :: suffix
    character(kind=c_char, len=:), allocatable :: buf
    character(len=:), allocatable :: sfx
    type(path_t), allocatable :: paths(:)
    integer(c_int) :: n
    integer :: m, p0, p1
    sfx = '.colnn'
    if (present(suffix)) sfx = suffix
    allocate (character(kind=c_char, len=1048576) :: buf)
    n = c_list_dir(dir//c_null_char, sfx//c_null_char, buf, int(len(buf), c_size_t))
    if (n == -1) then
      call self%destroy()
      stat = COLNN_ERR_IO
      errmsg = 'ensemble: cannot open directory '//dir
      return
    else if (n < 0) then
      call self%destroy()
      stat = COLNN_ERR_MEMORY
      errmsg = 'ensemble: too many member files in '//dir
      return
    else if (n == 0) then
      call self%destroy()
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble: no member files ('//sfx//') in directory '//dir
      return
    end if
    allocate (paths(n))
    p0 = 1
    do m = 1, n
      p1 = p0 + index(buf(p0:), achar(10)) - 2
      paths(m)%s = dir//'/'//buf(p0:p1)
      p0 = p1 + 2
    end do
    call self%load_files(paths, stat, errmsg)
  end subroutine ensemble_load_dir

  !> Members listed one path per line ('#' comments); relative paths are taken relative to the
  !> list file's directory.
  subroutine ensemble_load_list(self, list_file, stat, errmsg)
    class(ensemble_t), intent(inout) :: self
    character(len=*), intent(in) :: list_file
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(text_reader_t) :: r
    type(path_t), allocatable :: paths(:), tmp(:)
    character(len=:), allocatable :: msg, base, entry
    logical :: eof
    integer :: n, slash, pos, first, last
    call self%destroy()
    errmsg = ''
    call r%open(list_file, stat, msg)
    if (stat /= 0) then
      errmsg = 'ensemble list: '//msg
      return
    end if
    slash = index(list_file, '/', back=.true.)
    base = list_file(1:slash)
    allocate (paths(8))
    n = 0
    do
      call r%next_line(eof, stat, msg, skip_blank=.true.)
      if (stat /= 0) then
        errmsg = msg
        call r%close()
        return
      end if
      if (eof) exit
      pos = 1
      call next_token(r%buf(1:r%n), pos, first, last)
      entry = trim(adjustl(r%buf(1:r%n)))
      if (entry(1:1) /= '/') entry = base//entry
      if (n == size(paths)) then
        allocate (tmp(2 * n))
        tmp(1:n) = paths(1:n)
        call move_alloc(tmp, paths)
      end if
      n = n + 1
      paths(n)%s = entry
    end do
    call r%close()
    if (n == 0) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble list '//list_file//': names no member files'
      return
    end if
    call self%load_files(paths(1:n), stat, errmsg)
  end subroutine ensemble_load_list

  !> Batch-invariant products for every member (network_t%set_batch_invariant).
  subroutine ensemble_set_batch_invariant(self, flag)
    class(ensemble_t), intent(inout) :: self
    logical, intent(in) :: flag  !! .true.: every column the same bits in any call shape
    integer :: m
    if (.not. allocated(self%members)) return
    do m = 1, size(self%members)
      call self%members(m)%set_batch_invariant(flag)
    end do
  end subroutine ensemble_set_batch_invariant

  !> Gaussian input noise: `sd` has one value per input feature, or one for all (size 1).
  subroutine ensemble_set_noise(self, sd, seed, stat, errmsg, normalized)
    class(ensemble_t), intent(inout) :: self
    real(wp), intent(in) :: sd(:)
    integer(i8), intent(in) :: seed
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    !> sd is in the units each member sees after its leading Normalization layer (every member
    !> must begin with one); the noise added to the raw inputs is scaled per member and feature
    logical, intent(in), optional :: normalized
    real(wp), allocatable :: scale(:)
    integer :: m
    logical :: norm
    stat = COLNN_OK
    errmsg = ''
    if (.not. self%is_loaded()) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble set_noise: no ensemble is loaded'
      return
    end if
    if (size(sd) /= 1 .and. size(sd) /= self%n_inputs) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble set_noise: give 1 or '//str(self%n_inputs)//' standard deviations, got '// &
               str(size(sd))
      return
    end if
    if (.not. all(ieee_is_finite(sd)) .or. any(sd < 0)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble set_noise: standard deviations must be finite and >= 0'
      return
    end if
    if (size(sd) == 1) then
      self%noise_sd = sd(1)
    else
      self%noise_sd = sd
    end if
    norm = .false.
    if (present(normalized)) norm = normalized
    do m = 1, self%n_members
      if (norm) then
        call self%members(m)%input_scale(scale, stat)
        if (stat /= 0) then
          stat = COLNN_ERR_ARGUMENT
          errmsg = 'ensemble set_noise: noise in normalized units needs every member to begin '// &
                   'with a Normalization layer; '//self%paths(m)%s//' does not'
          return
        end if
        self%member_sd(:, m) = self%noise_sd * scale
      else
        self%member_sd(:, m) = self%noise_sd
      end if
    end do
    self%noise_normalized = norm
    self%has_noise = any(self%noise_sd > 0)
    self%seed = seed
    self%calls = 0
  end subroutine ensemble_set_noise

  !> mean(n_outputs, nc) over members; optional spread(n_outputs, nc) and
  !> members_out(n_outputs, nc, n_members). `column_offset` is the global index (0-based) of the
  !> first column, so noise does not depend on how a host splits its columns. `step` (a host's
  !> time step) replaces the call counter in the noise key, so that a step handed over in
  !> several column chunks draws the same noise as in one.
  subroutine ensemble_forward(self, x, mean, stat, errmsg, spread, members_out, column_offset, &
                              step)
    class(ensemble_t), intent(inout) :: self
    real(wp), intent(in) :: x(:, :)
    real(wp), intent(out) :: mean(:, :)
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(wp), intent(out), optional :: spread(:, :)
    real(wp), intent(out), optional :: members_out(:, :, :)
    integer(i8), intent(in), optional :: column_offset
    integer(i8), intent(in), optional :: step
    integer :: nc
    integer(i8) :: col0, key

    stat = COLNN_OK
    errmsg = ''
    if (.not. self%is_loaded()) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble forward: no ensemble is loaded'
      return
    end if
    nc = size(x, 2)
    if (size(x, 1) /= self%n_inputs .or. size(mean, 1) /= self%n_outputs .or. &
        size(mean, 2) /= nc) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble forward: expected x('//str(self%n_inputs)//', n) and mean('// &
               str(self%n_outputs)//', n), got x('//str(size(x, 1))//', '//str(nc)// &
               ') and mean('//str(size(mean, 1))//', '//str(size(mean, 2))//')'
      return
    end if
    if (nc < 1) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble forward: zero columns'
      return
    end if
    if (present(spread)) then
      if (any(shape(spread) /= shape(mean))) then
        stat = COLNN_ERR_ARGUMENT
        errmsg = 'ensemble forward: spread must have the shape of mean'
        return
      end if
    end if
    if (present(members_out)) then
      if (any(shape(members_out) /= [self%n_outputs, nc, self%n_members])) then
        stat = COLNN_ERR_ARGUMENT
        errmsg = 'ensemble forward: members_out must be ('//str(self%n_outputs)//', '// &
                 str(nc)//', '//str(self%n_members)//')'
        return
      end if
    end if
    col0 = 0
    if (present(column_offset)) col0 = column_offset
    if (present(step)) then
      key = step
    else if (self%has_noise .and. in_parallel()) then
      ! the call counter would number the chunks in whatever order the threads reach it
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'ensemble forward: from several threads, a noisy ensemble needs the step '// &
               '(the noise key), so that the noise does not depend on which thread comes first'
      return
    else
      if (.not. in_parallel()) self%calls = self%calls + 1
      key = self%calls
    end if
#ifdef _OPENMP
    call forward_members(self, thread_scratch, x, mean, nc, col0, key, stat, errmsg, spread, &
                         members_out)
#else
    call forward_members(self, self%scratch, x, mean, nc, col0, key, stat, errmsg, spread, &
                         members_out)
#endif
  end subroutine ensemble_forward

  subroutine forward_members(self, sc, x, mean, nc, col0, key, stat, errmsg, spread, &
                             members_out)
    type(ensemble_t), intent(in) :: self
    type(ensemble_scratch_t), intent(inout) :: sc
    real(wp), intent(in) :: x(:, :)
    real(wp), intent(out) :: mean(:, :)
    integer, intent(in) :: nc
    integer(i8), intent(in) :: col0, key
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(wp), intent(out), optional :: spread(:, :)
    real(wp), intent(out), optional :: members_out(:, :, :)
    integer :: m, n_threads, j, n_out
    real(wp) :: inv_n

    call reserve(sc, self, nc, stat, errmsg)
    if (stat /= 0) return
    n_out = self%n_outputs
    n_threads = 1
    !$ n_threads = omp_get_max_threads()
    !$omp parallel do schedule(dynamic, 1) if(self%n_members >= n_threads .and. n_threads > 1)
    do m = 1, self%n_members
      call run_member(self, sc, m, nc, col0, key, x)
    end do
    !$omp end parallel do

    do m = 1, self%n_members
      if (sc%member_stat(m) /= 0) then
        stat = sc%member_stat(m)
        errmsg = 'ensemble member '//self%paths(m)%s//': '//trim(sc%member_msg(m))
        if (stat /= COLNN_ERR_NONFINITE) return
        exit
      end if
    end do

    ! the reduction runs over members in a fixed order: the same sums whatever the threads did
    inv_n = 1.0_wp / self%n_members
    do j = 1, nc
      mean(:, j) = sc%yout(1:n_out, j, 1)
      do m = 2, self%n_members
        mean(:, j) = mean(:, j) + sc%yout(1:n_out, j, m)
      end do
      mean(:, j) = mean(:, j) * inv_n
    end do
    if (present(spread)) then
      do j = 1, nc
        spread(:, j) = 0
        do m = 1, self%n_members
          spread(:, j) = spread(:, j) + (sc%yout(1:n_out, j, m) - mean(:, j))**2
        end do
        spread(:, j) = sqrt(spread(:, j) * inv_n)
      end do
    end if
    if (present(members_out)) members_out = sc%yout(1:n_out, 1:nc, 1:self%n_members)
  end subroutine forward_members

  !> Makes `sc` large enough for `self` and nc columns; it only grows.
  subroutine reserve(sc, self, nc, stat, errmsg)
    type(ensemble_scratch_t), intent(inout) :: sc
    type(ensemble_t), intent(in) :: self
    integer, intent(in) :: nc
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: n
    stat = 0
    n = self%n_members
    if (.not. allocated(sc%ws)) then
      allocate (sc%ws(n), sc%member_stat(n), sc%member_msg(n), stat=stat)
    else if (size(sc%ws) < n) then
      deallocate (sc%ws, sc%member_stat, sc%member_msg)
      allocate (sc%ws(n), sc%member_stat(n), sc%member_msg(n), stat=stat)
    end if
    if (stat == 0) call grow(sc%yout, self%n_outputs, nc, n, stat)
    if (stat == 0 .and. self%has_noise) call grow(sc%xn, self%n_inputs, nc, n, stat)
    if (stat /= 0) then
      stat = COLNN_ERR_MEMORY
      errmsg = 'ensemble forward: cannot allocate work arrays'
    end if
  end subroutine reserve

  subroutine grow(a, n1, n2, n3, stat)
    real(wp), allocatable, intent(inout) :: a(:, :, :)
    integer, intent(in) :: n1, n2, n3
    integer, intent(out) :: stat
    integer :: s(3)
    stat = 0
    if (allocated(a)) then
      s = shape(a)
      if (all(s >= [n1, n2, n3])) return
      deallocate (a)
      allocate (a(max(s(1), n1), max(s(2), n2), max(s(3), n3)), stat=stat)
    else
      allocate (a(n1, n2, n3), stat=stat)
    end if
  end subroutine grow

  logical function in_parallel()
    in_parallel = .false.
    !$ in_parallel = omp_in_parallel()
  end function in_parallel

  subroutine run_member(self, sc, m, nc, col0, key, x)
    type(ensemble_t), intent(in) :: self
    type(ensemble_scratch_t), intent(inout) :: sc
    integer, intent(in) :: m, nc
    integer(i8), intent(in) :: col0, key
    real(wp), intent(in) :: x(:, :)
    character(len=512) :: msg
    associate (y => sc%yout(1:self%n_outputs, 1:nc, m))
      if (self%has_noise) then
        call add_gaussian_noise(self%seed, m, key, col0, self%n_inputs, nc, self%member_sd(:, m), &
                                x, sc%xn(1:self%n_inputs, 1:nc, m))
        call self%members(m)%forward_ws(sc%ws(m), sc%xn(1:self%n_inputs, 1:nc, m), y, &
                                        sc%member_stat(m), msg)
      else
        call self%members(m)%forward_ws(sc%ws(m), x, y, sc%member_stat(m), msg)
      end if
    end associate
    sc%member_msg(m) = msg
  end subroutine run_member
end module colnn_ensemble
