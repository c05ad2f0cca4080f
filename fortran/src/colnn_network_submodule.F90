!> The network's procedures (declared in colnn_network): loading and saving, the cache-blocked
!> forward pass, and access to the layers' parameters and state.
submodule (colnn_network) colnn_network_submodule
  use colnn_status
  use colnn_strings, only: str
  use colnn_registry, only: create_layer
  use colnn_model_file, only: model_header_t, read_model_file, write_model_file
  use colnn_fkb, only: read_fkb_file
  use colnn_textio, only: text_reader_t
!$ use omp_lib, only: omp_get_max_threads, omp_get_thread_num
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  implicit none

  !> The two buffers of a column block take about this many bytes (kept in a core's L2).
  integer, parameter :: BLOCK_BYTES = 1048576
  integer, parameter :: MIN_BLOCK = 16, MAX_BLOCK = 1024, MIN_SPLIT = 4
  !> Column sub-blocks of the in-place passes stay within about this many bytes (L1).
  integer, parameter :: L1_BYTES = 16384

  !> The work arrays of the calling thread (OpenMP threadprivate: thread-local storage, so
  !> host threads that are not OpenMP's get their own too).
  type(workspace_t), save :: thread_ws
  !$omp threadprivate(thread_ws)

contains

  module procedure network_set_batch_invariant
    integer :: k
    self%batch_invariant = flag
    if (.not. allocated(self%layers)) return
    do k = 1, size(self%layers)
      if (allocated(self%layers(k)%layer)) self%layers(k)%layer%batch_invariant = flag
    end do
  end procedure network_set_batch_invariant

  module procedure network_is_loaded
    network_is_loaded = self%n_layers > 0
  end procedure network_is_loaded

  module procedure network_destroy
    if (allocated(self%layers)) deallocate (self%layers)
    if (allocated(self%plan)) deallocate (self%plan)
    if (allocated(self%ws%a)) deallocate (self%ws%a)
    if (allocated(self%ws%b)) deallocate (self%ws%b)
    self%ws%block = 0
    self%n_layers = 0
    self%n_inputs = 0
    self%n_outputs = 0
  end procedure network_destroy

  !> First non-blank token of the file: 'colnn' for our format, an integer for FKB's.
  subroutine sniff_format(path, fmt, stat, errmsg)
    character(len=*), intent(in) :: path
    character(len=:), allocatable, intent(out) :: fmt
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    type(text_reader_t) :: r
    logical :: eof
    character(len=:), allocatable :: line
    integer :: i
    fmt = ''
    call r%open(path, stat, errmsg)
    if (stat /= 0) return
    call r%next_line(eof, stat, errmsg, skip_blank=.true.)
    call r%close()
    if (stat /= 0) return
    if (eof) then
      stat = COLNN_ERR_FORMAT
      errmsg = path//': empty file'
      return
    end if
    line = trim(adjustl(r%buf(1:r%n)))
    if (line(1:min(5, len(line))) == 'colnn') then
      fmt = 'colnn'
      return
    end if
    do i = 1, len(line)
      if (index('0123456789', line(i:i)) == 0) exit
    end do
    if (i > len(line) .and. len(line) > 0) then
      fmt = 'fkb'
      return
    end if
    stat = COLNN_ERR_FORMAT
    errmsg = path//':'//str(r%line_no)//': neither a colnn model file nor an FKB text file '// &
             "(first line '"//line(1:min(len(line), 40))//"')"
  end subroutine sniff_format

  module procedure network_load
    type(model_header_t) :: header
    type(layer_spec_t), allocatable :: specs(:)
    character(len=:), allocatable :: fmt, msg, lname
    integer :: k, width

    call self%destroy()
    errmsg = ''
    call sniff_format(path, fmt, stat, msg)
    if (stat == 0) then
      if (fmt == 'colnn') then
        call read_model_file(path, header, specs, stat, msg, training)
      else
        call read_fkb_file(path, header, specs, stat, msg)
      end if
    end if
    if (stat /= 0) then
      errmsg = msg
      return
    end if

    allocate (self%layers(header%n_layers))
    width = header%n_inputs
    do k = 1, header%n_layers
      call create_layer(specs(k)%type_name, self%layers(k)%layer, stat, msg)
      if (stat /= 0) then
        errmsg = specs(k)%where()//': '//msg
        exit
      end if
      lname = specs(k)%type_name//'_'//str(k)
      if (specs(k)%find_attr('name') > 0) then
        call specs(k)%get_text('name', lname, stat, msg)
      end if
      call self%layers(k)%layer%init(specs(k), width, stat, msg)
      if (stat /= 0) then
        errmsg = msg
        exit
      end if
      self%layers(k)%layer%name = lname
      if (self%layers(k)%layer%n_in /= width .or. self%layers(k)%layer%n_out < 1) then
        stat = COLNN_ERR_FORMAT
        errmsg = specs(k)%where()//': layer did not set valid n_in/n_out'
        exit
      end if
      width = self%layers(k)%layer%n_out
    end do
    if (stat == 0 .and. width /= header%n_outputs) then
      stat = COLNN_ERR_FORMAT
      errmsg = path//': the header declares '//str(header%n_outputs)//' outputs but the '// &
               'layers produce '//str(width)
    end if
    if (stat /= 0) then
      deallocate (self%layers)
      if (present(training)) then
        if (allocated(training)) deallocate (training)
      end if
      return
    end if

    self%n_layers = header%n_layers
    self%n_inputs = header%n_inputs
    self%n_outputs = header%n_outputs
    self%source = path
    if (allocated(header%meta)) then
      allocate (self%meta(size(header%meta)))
      self%meta = header%meta
    else
      allocate (self%meta(0))
    end if
    call self%set_batch_invariant(self%batch_invariant)
    call build_plan(self)
  end procedure network_load

  subroutine build_plan(self)
    type(network_t), intent(inout) :: self
    type(step_t) :: steps(self%n_layers + 1)
    integer :: k, n
    n = 0
    k = 1
    self%max_width = self%n_inputs
    do while (k <= self%n_layers)
      n = n + 1
      steps(n) = step_t()
      associate (l => self%layers(k)%layer)
        self%max_width = max(self%max_width, l%n_out)
        if (.not. l%is_elementwise()) then
          steps(n)%main = k
          steps(n)%main_epilogue = l%has_epilogue()
          k = k + 1
        end if
      end associate
      steps(n)%first = k
      do while (k <= self%n_layers)
        if (.not. self%layers(k)%layer%is_elementwise()) exit
        k = k + 1
      end do
      steps(n)%last = k - 1
      if (steps(n)%main > 0) then
        steps(n)%width = self%layers(steps(n)%main)%layer%n_out
      else
        steps(n)%width = self%layers(steps(n)%first)%layer%n_out
      end if
    end do
    self%plan = steps(1:n)
  end subroutine build_plan

  module procedure network_save
    type(layer_spec_t), allocatable :: specs(:)
    character(len=:), allocatable :: msg
    integer :: k
    errmsg = ''
    if (.not. self%is_loaded()) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'save '//path//': the network is empty'
      return
    end if
    allocate (specs(self%n_layers))
    do k = 1, self%n_layers
      specs(k)%type_name = self%layers(k)%layer%type_name()
      call specs(k)%set_text('name', self%layers(k)%layer%name)
      call self%layers(k)%layer%describe(specs(k))
    end do
    call write_model_file(path, self%n_inputs, self%n_outputs, specs, self%meta, stat, msg, &
                          training)
    if (stat /= 0) errmsg = msg
  end procedure network_save

  module procedure network_num_params
    integer :: k
    network_num_params = 0
    do k = 1, self%n_layers
      network_num_params = network_num_params + self%layers(k)%layer%num_params()
    end do
  end procedure network_num_params

  module procedure network_forward_sp
#ifdef _OPENMP
    call engine(self, thread_ws, stat, errmsg, columns_first, xs=x, ys=y)
#else
    ! without OpenMP there is no thread-local storage in Fortran: one workspace per network
    call engine(self, self%ws, stat, errmsg, columns_first, xs=x, ys=y)
#endif
  end procedure network_forward_sp

  module procedure network_forward_dp
#ifdef _OPENMP
    call engine(self, thread_ws, stat, errmsg, columns_first, xd=x, yd=y)
#else
    call engine(self, self%ws, stat, errmsg, columns_first, xd=x, yd=y)
#endif
  end procedure network_forward_dp

  module procedure network_forward_ws
#ifdef COLNN_DOUBLE
    call engine(self, ws, stat, errmsg, xd=x, yd=y)
#else
    call engine(self, ws, stat, errmsg, xs=x, ys=y)
#endif
  end procedure network_forward_ws

  !> The forward pass over one x and one y of either kind and layout (exactly one of xs, xd and
  !> one of ys, yd).
  subroutine engine(self, ws, stat, errmsg, columns_first, xs, xd, ys, yd)
    class(network_t), intent(in) :: self
    type(workspace_t), intent(inout) :: ws
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    logical, intent(in), optional :: columns_first
    real(sp), intent(in), optional :: xs(:, :)
    real(dp), intent(in), optional :: xd(:, :)
    real(sp), intent(out), optional :: ys(:, :)
    real(dp), intent(out), optional :: yd(:, :)
    integer :: nc, block, cache_block, n_threads, n_blocks, ib, j0, m, t, rows, cols, fx, fy, ny
    integer :: bad(2)
    logical :: resize, cf

    stat = COLNN_OK
    errmsg = ''
    cf = .false.
    if (present(columns_first)) cf = columns_first
    if (.not. self%is_loaded()) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'forward: no model is loaded'
      return
    end if
    ! (features, columns) or (columns, features): fx, fy features; nc, ny columns
    if (present(xs)) then
      fx = size(xs, merge(2, 1, cf)); nc = size(xs, merge(1, 2, cf))
    else
      fx = size(xd, merge(2, 1, cf)); nc = size(xd, merge(1, 2, cf))
    end if
    if (present(ys)) then
      fy = size(ys, merge(2, 1, cf)); ny = size(ys, merge(1, 2, cf))
    else
      fy = size(yd, merge(2, 1, cf)); ny = size(yd, merge(1, 2, cf))
    end if
    if (fx /= self%n_inputs) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'forward: input has '//str(fx)//' features, the model ('//self%source// &
               ') takes '//str(self%n_inputs)//' (arrays are '//layout_name(cf)//')'
      return
    end if
    if (fy /= self%n_outputs) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'forward: output array has '//str(fy)//' features, the model ('// &
               self%source//') gives '//str(self%n_outputs)//' (arrays are '//layout_name(cf)//')'
      return
    end if
    if (nc < 1) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'forward: zero columns'
      return
    end if
    if (ny /= nc) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'forward: input has '//str(nc)//' columns but output has '//str(ny)
      return
    end if
    if (self%check_finite) then
      bad = 0
      if (present(xs)) then
        if (.not. all(ieee_is_finite(xs))) bad = findloc(ieee_is_finite(xs), .false.)
      else
        if (.not. all(ieee_is_finite(xd))) bad = findloc(ieee_is_finite(xd), .false.)
      end if
      if (bad(1) > 0) then
        if (cf) bad = bad([2, 1])
        stat = COLNN_ERR_NONFINITE
        errmsg = 'forward: input feature '//str(bad(1))//' of column '//str(bad(2))// &
                 ' is not finite'
        return
      end if
    end if

    ! the buffers are sized once for the cache-sized block; a call with few columns splits them
    ! over the threads (so BLAS is never asked to thread a thin GEMM) and uses a prefix
    cache_block = max(MIN_BLOCK, min(MAX_BLOCK, BLOCK_BYTES / (2 * self%max_width * (storage_size(1.0_wp) / 8))))
    n_threads = 1
    !$ n_threads = omp_get_max_threads()
    ! Fortran does not short-circuit .or., so size() must not see an unallocated array
    ! a workspace only grows: one thread's (thread-local) serves every network it runs
    resize = .not. allocated(ws%a)
    if (.not. resize) resize = size(ws%a, 1) < self%max_width * cache_block .or. &
                               size(ws%a, 2) < n_threads
    if (resize) then
      rows = self%max_width * cache_block
      cols = n_threads
      if (allocated(ws%a)) then
        rows = max(rows, size(ws%a, 1))
        cols = max(cols, size(ws%a, 2))
        deallocate (ws%a, ws%b)
      end if
      allocate (ws%a(rows, cols), ws%b(rows, cols), stat=stat)
      if (stat /= 0) then
        stat = COLNN_ERR_MEMORY
        errmsg = 'forward: cannot allocate work arrays'
        ws%block = 0
        return
      end if
      ws%block = cache_block
    end if
    if (self%batch_invariant) then
      ! a column's result does not depend on its block: one block per thread (each block streams
      ! every weight once), in whole register tiles of 8 columns
      block = (nc + n_threads - 1) / n_threads
      block = min(cache_block, max(MIN_BLOCK, 8 * ((block + 7) / 8)))
    else
      ! the BLAS' results depend on the block, so the partition must not depend on the thread
      ! count (bitwise the same for any OMP_NUM_THREADS); few columns are still cut into up to
      ! MIN_SPLIT blocks for the threads
      block = min(cache_block, max(MIN_BLOCK, (nc + MIN_SPLIT - 1) / MIN_SPLIT))
    end if
    n_blocks = (nc + block - 1) / block
    !$omp parallel do schedule(static) private(j0, m, t) if(n_blocks > 1)
    do ib = 1, n_blocks
      t = 1
      !$ t = omp_get_thread_num() + 1
      j0 = (ib - 1) * block + 1
      m = min(block, nc - j0 + 1)
      call run(self, ws%a(:, t), ws%b(:, t), m, j0, cf, xs, xd, ys, yd)
    end do
    !$omp end parallel do

    if (self%check_finite) then
      bad = 0
      if (present(ys)) then
        if (.not. all(ieee_is_finite(ys))) bad = findloc(ieee_is_finite(ys), .false.)
      else
        if (.not. all(ieee_is_finite(yd))) bad = findloc(ieee_is_finite(yd), .false.)
      end if
      if (bad(1) > 0) then
        if (cf) bad = bad([2, 1])
        stat = COLNN_ERR_NONFINITE
        errmsg = 'forward: output '//str(bad(1))//' of column '//str(bad(2))// &
                 ' is not finite ('//self%source//')'
      end if
    end if
  end subroutine engine

  pure function layout_name(columns_first) result(s)
    logical, intent(in) :: columns_first
    character(len=19) :: s
    s = merge('(columns, features)', '(features, columns)', columns_first)
  end function layout_name

  !> Columns j0..j0+m-1 through every layer, ping-ponging between a and b; they enter from and
  !> leave to the caller's arrays in its kind and layout.
  subroutine run(self, a, b, m, j0, cf, xs, xd, ys, yd)
    type(network_t), intent(in) :: self
    real(wp), intent(inout), contiguous :: a(:), b(:)
    integer, intent(in) :: m, j0
    logical, intent(in) :: cf
    real(sp), intent(in), optional :: xs(:, :)
    real(dp), intent(in), optional :: xd(:, :)
    real(sp), intent(inout), optional :: ys(:, :)
    real(dp), intent(inout), optional :: yd(:, :)
    logical :: in_a
    integer :: s
    call copy_in(self%n_inputs, m, j0, cf, a, xs, xd)
    in_a = .true.
    do s = 1, size(self%plan)
      associate (st => self%plan(s))
        if (st%main > 0) then
          if (in_a) then
            call self%layers(st%main)%layer%forward_core(m, a, b)
          else
            call self%layers(st%main)%layer%forward_core(m, b, a)
          end if
          in_a = .not. in_a
        end if
        if (st%main_epilogue .or. st%last >= st%first) then
          if (in_a) then
            call apply_inplace_run(self, st, m, a)
          else
            call apply_inplace_run(self, st, m, b)
          end if
        end if
      end associate
    end do
    if (in_a) then
      call copy_out(self%n_outputs, m, j0, cf, a, ys, yd)
    else
      call copy_out(self%n_outputs, m, j0, cf, b, ys, yd)
    end if
  end subroutine run

  subroutine copy_in(n, nc, j0, cf, a, xs, xd)
    integer, intent(in) :: n, nc, j0
    logical, intent(in) :: cf
    real(wp), intent(out) :: a(n, nc)
    real(sp), intent(in), optional :: xs(:, :)
    real(dp), intent(in), optional :: xd(:, :)
    integer :: i, j
    if (present(xs)) then
      if (cf) then
        ! read the host's columns where they are contiguous; the block is in cache
        do i = 1, n
          do j = 1, nc
            a(i, j) = real(xs(j0 + j - 1, i), wp)
          end do
        end do
      else
        a = real(xs(:, j0:j0 + nc - 1), wp)
      end if
    else
      if (cf) then
        ! read the host's columns where they are contiguous; the block is in cache
        do i = 1, n
          do j = 1, nc
            a(i, j) = real(xd(j0 + j - 1, i), wp)
          end do
        end do
      else
        a = real(xd(:, j0:j0 + nc - 1), wp)
      end if
    end if
  end subroutine copy_in

  subroutine copy_out(n, nc, j0, cf, a, ys, yd)
    integer, intent(in) :: n, nc, j0
    logical, intent(in) :: cf
    real(wp), intent(in) :: a(n, nc)
    real(sp), intent(inout), optional :: ys(:, :)
    real(dp), intent(inout), optional :: yd(:, :)
    integer :: i, j
    if (present(ys)) then
      if (cf) then
        do i = 1, n
          do j = 1, nc
            ys(j0 + j - 1, i) = real(a(i, j), sp)
          end do
        end do
      else
        ys(:, j0:j0 + nc - 1) = real(a, sp)
      end if
    else
      if (cf) then
        do i = 1, n
          do j = 1, nc
            yd(j0 + j - 1, i) = real(a(i, j), dp)
          end do
        end do
      else
        yd(:, j0:j0 + nc - 1) = real(a, dp)
      end if
    end if
  end subroutine copy_out

  !> The epilogue of the step's main layer, then its elementwise layers, in place, over column
  !> sub-blocks that fit in L1: all of them touch a sub-block while it is there, so the run costs
  !> about one pass over the block however many layers it has.
  subroutine apply_inplace_run(self, st, nc, a)
    type(network_t), intent(in) :: self
    type(step_t), intent(in) :: st
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(st%width, nc)
    integer :: k, sub, j0, m
    sub = max(1, L1_BYTES / (st%width * (storage_size(a) / 8)))
    do j0 = 1, nc, sub
      m = min(sub, nc - j0 + 1)
      if (st%main_epilogue) call self%layers(st%main)%layer%epilogue(m, a(:, j0:j0 + m - 1))
      do k = st%first, st%last
        call self%layers(k)%layer%apply_inplace(m, a(:, j0:j0 + m - 1))
      end do
    end do
  end subroutine apply_inplace_run

  module procedure network_ends_in_softmax
    network_ends_in_softmax = .false.
    if (self%n_layers < 1) return
    network_ends_in_softmax = self%layers(self%n_layers)%layer%ends_in_softmax()
  end procedure network_ends_in_softmax

  module procedure network_input_scale
    stat = COLNN_ERR_UNSUPPORTED
    if (self%n_layers < 1) return
    call self%layers(1)%layer%input_scale(scale, stat)
  end procedure network_input_scale

  module procedure network_num_trainable
    integer :: k
    network_num_trainable = 0
    do k = 1, self%n_layers
      network_num_trainable = network_num_trainable + self%layers(k)%layer%num_trainable()
    end do
  end procedure network_num_trainable

  module procedure network_get_params
    integer(i8) :: off
    integer :: k, n
    off = 0
    do k = 1, self%n_layers
      n = self%layers(k)%layer%num_trainable()
      if (n > 0) call self%layers(k)%layer%get_params(p(off + 1:off + n))
      off = off + n
    end do
  end procedure network_get_params

  module procedure network_set_params
    integer(i8) :: off
    integer :: k, n
    off = 0
    do k = 1, self%n_layers
      n = self%layers(k)%layer%num_trainable()
      if (n > 0) call self%layers(k)%layer%set_params(p(off + 1:off + n))
      off = off + n
    end do
  end procedure network_set_params

  module procedure network_get_grads
    integer(i8) :: off
    integer :: k, n
    off = 0
    do k = 1, self%n_layers
      n = self%layers(k)%layer%num_trainable()
      if (n > 0) call self%layers(k)%layer%get_grads(g(off + 1:off + n))
      off = off + n
    end do
  end procedure network_get_grads

  module procedure network_num_state
    integer :: k
    network_num_state = 0
    do k = 1, self%n_layers
      network_num_state = network_num_state + self%layers(k)%layer%num_state()
    end do
  end procedure network_num_state

  module procedure network_get_state
    integer(i8) :: off
    integer :: k, n
    off = 0
    do k = 1, self%n_layers
      n = self%layers(k)%layer%num_state()
      if (n > 0) call self%layers(k)%layer%get_state(s(off + 1:off + n))
      off = off + n
    end do
  end procedure network_get_state

  module procedure network_set_state
    integer(i8) :: off
    integer :: k, n
    off = 0
    do k = 1, self%n_layers
      n = self%layers(k)%layer%num_state()
      if (n > 0) call self%layers(k)%layer%set_state(s(off + 1:off + n))
      off = off + n
    end do
  end procedure network_set_state
end submodule colnn_network_submodule
