!> The driver of the toy hosts: what a host program does around its model. A host is a type
!> extending host_t (its configuration groups, checks, set-up, one step, failure checks,
!> diagnostics and output); host_cli and host_run do the rest, the same for every host:
!> the command line (CONFIG.nml | --defaults | --print-config CONFIG.nml), the strict namelist
!> reading, MPI, the coupler's set-up for closure = 'nn', the main loop with its steps-to-failure
!> bookkeeping, the timers, the HDF5 file's creation and result.json.
!>
!> The outcome of a run lives in its host_run_t (result, failure, diagnostics records, timers),
!> not in the driver's locals, so that one process may later hold several runs.
module host_driver
  use, intrinsic :: iso_fortran_env, only: error_unit, output_unit
  use mpi_f08
  use colnn, only: wp
  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize, &
                           colnn_coupler_config_t, colnn_coupler_get_config, colnn_coupler_timers
  use host_common
  use host_h5, only: h5_out_t
  use host_mpi, only: share_error, bcast_int, bcast_str
  implicit none
  private

  public :: host_t, host_run_t, run_settings_t, coupler_spec_t, failure_t, records_t, &
            host_cli, host_run, key_error

  integer, parameter, public :: GROUP_LEN = 16   !< the length of a namelist group's name

  !> What the driver needs to know of a host's configuration (the keys every host's run group
  !> has, and how the host names them in messages).
  type :: run_settings_t
    character(len=16) :: mode = 'coarse'           !< 'truth' | 'coarse'
    character(len=16) :: closure = ''              !< coarse mode: 'nn' runs the coupler
    character(len=GROUP_LEN) :: run_group = ''     !< the group holding these keys
    character(len=16) :: columns_key = ''          !< what the run group calls the column count
    real(dp) :: dt = 0
    integer :: n_steps = 0, spinup_steps = 0
    integer :: output_interval = 1                 !< coarse: steps between diagnostics records
    integer :: sample_interval = 1                 !< truth: steps between samples
    integer :: init_index = 1
    integer(i8) :: seed = 0
    character(len=1024) :: output_dir = '.'
    integer :: n_columns = 0                       !< global columns
    integer :: inject_nan_step = -1, inject_nan_column = 1
    character(len=8) :: inject_value = 'nan'
    integer :: record_size = 0                     !< values in one record of this mode
  end type run_settings_t

  !> What the coupler is initialised with (the driver calls colnn_coupler_init).
  type :: coupler_spec_t
    integer :: n_in = 0, n_out = 0                 !< features per column
    character(len=:), allocatable :: passes        !< what the host passes, added to an init error
    character(len=32) :: output_name = ''          !< the variable a failed network call names
    !> the declared "NAME LEVEL UNITS" of each feature, checked against the model's; unallocated:
    !> none declared
    character(len=32), allocatable :: input_vars(:), output_vars(:)
  end type coupler_spec_t

  !> A failure criterion that fired (the same on every rank).
  type :: failure_t
    logical :: failed = .false.
    character(len=32) :: reason = '', variable = ''
    character(len=1024) :: message = ''
  end type failure_t

  !> The diagnostics records of a run (coarse) or its samples (truth), one column a record.
  type :: records_t
    integer :: n = 0                               !< records taken (on every rank)
    logical :: held = .false.                      !< this rank holds the values (rank 0)
    real(dp), allocatable :: time(:)               !< (capacity)
    !> (record_size, capacity) on rank 0, which gathers them; one scratch record elsewhere
    real(dp), allocatable :: values(:, :)
  contains
    procedure :: series => records_series
  end type records_t

  !> One run: its outcome and what is kept of it until the end.
  type :: host_run_t
    type(run_result_t) :: result
    type(failure_t) :: failure
    type(records_t) :: records
    real(dp) :: t_start = 0, t_nn = 0, t_io = 0    !< wall clock at the start; seconds so far
  contains
    procedure :: network => run_network
  end type host_run_t

  !> A host model. Every procedure with `collective` in its description is called on all ranks
  !> and must return the same stat/failure on all of them.
  type, abstract :: host_t
    type(MPI_Comm) :: comm                         !< set by the driver before setup
    integer :: rank = 0, nranks = 1
  contains
    procedure(name_iface), deferred :: name
    procedure(groups_iface), deferred :: groups
    procedure(group_io_iface), deferred :: group_io
    procedure(settings_iface), deferred :: settings
    procedure(validate_iface), deferred :: validate
    procedure(setup_iface), deferred :: setup
    procedure(coupler_spec_iface), deferred :: coupler_spec
    procedure(start_iface), deferred :: start
    procedure(step_iface), deferred :: step
    procedure(inject_iface), deferred :: inject
    procedure(check_iface), deferred :: check
    procedure(record_iface), deferred :: record
    procedure(summarize_iface), deferred :: summarize
    procedure(write_output_iface), deferred :: write_output
  end type host_t

  abstract interface
    !> result.json's "host" ('l96').
    function name_iface(self) result(name)
      import :: host_t
      class(host_t), intent(in) :: self
      character(len=:), allocatable :: name
    end function name_iface

    !> The host's namelist groups, in the order they are read and printed (the coupler's
    !> &colnn_coupler is allowed besides them). (A subroutine: gfortran 12 fails to compile
    !> an allocatable character array returned by a type-bound function.)
    subroutine groups_iface(self, groups)
      import :: host_t, GROUP_LEN
      class(host_t), intent(in) :: self
      character(len=GROUP_LEN), allocatable, intent(out) :: groups(:)
    end subroutine groups_iface

    !> One of the host's groups: read(unit, nml=group), its values taken when iostat = 0 and
    !> else left as they were, or write(unit, nml=group) with the values the host holds. (Both
    !> in one procedure: the namelist statement must be where its variables are.)
    subroutine group_io_iface(self, group, unit, reading, iostat, iomsg)
      import :: host_t
      class(host_t), intent(inout) :: self
      character(len=*), intent(in) :: group   !! one of groups()
      integer, intent(in) :: unit             !! reading: the namelist file, at its start
      logical, intent(in) :: reading          !! read the group, else write it
      integer, intent(out) :: iostat          !! of the read: < 0 the group's end was not found
      character(len=*), intent(inout) :: iomsg
    end subroutine group_io_iface

    function settings_iface(self) result(s)
      import :: host_t, run_settings_t
      class(host_t), intent(in) :: self
      type(run_settings_t) :: s
    end function settings_iface

    !> The host's own checks of its values (the keys of run_settings_t but mode are checked by
    !> the driver after these); errmsg from key_error.
    subroutine validate_iface(self, path, stat, errmsg)
      import :: host_t
      class(host_t), intent(in) :: self
      character(len=*), intent(in) :: path    !! the namelist file, for messages
      integer, intent(out) :: stat
      character(len=*), intent(out) :: errmsg
    end subroutine validate_iface

    !> Decomposition over self%comm, every array of the run (nothing is allocated after this),
    !> the initial state. Collective; a failure on one rank is shared by the driver.
    subroutine setup_iface(self, stat, errmsg)
      import :: host_t
      class(host_t), intent(inout) :: self
      integer, intent(out) :: stat
      character(len=*), intent(out) :: errmsg
    end subroutine setup_iface

    function coupler_spec_iface(self) result(spec)
      import :: host_t, coupler_spec_t
      class(host_t), intent(in) :: self
      type(coupler_spec_t) :: spec
    end function coupler_spec_iface

    !> Before step 1 (collective): a spin-up, the state of reference for the drifts.
    subroutine start_iface(self, run)
      import :: host_t, host_run_t
      class(host_t), intent(inout) :: self
      type(host_run_t), intent(inout) :: run
    end subroutine start_iface

    !> One step of the mode's dynamics (collective). stat /= 0 (on every rank): the network
    !> failed, errmsg says why.
    subroutine step_iface(self, run, step, stat, errmsg)
      import :: host_t, host_run_t
      class(host_t), intent(inout) :: self
      type(host_run_t), intent(inout) :: run  !! its network calls go through run%network
      integer, intent(in) :: step
      integer, intent(out) :: stat
      character(len=*), intent(out) :: errmsg
    end subroutine step_iface

    !> Fault injection: `value` into the state at global column `column` (on its rank).
    subroutine inject_iface(self, column, value)
      import :: host_t, dp
      class(host_t), intent(inout) :: self
      integer, intent(in) :: column
      real(dp), intent(in) :: value
    end subroutine inject_iface

    !> The failure criteria after `step` (collective).
    subroutine check_iface(self, step, failure)
      import :: host_t, failure_t
      class(host_t), intent(inout) :: self
      integer, intent(in) :: step
      type(failure_t), intent(out) :: failure
    end subroutine check_iface

    !> One diagnostics record (coarse) or sample (truth) of the state after `step`
    !> (collective): values(record_size) on rank 0.
    subroutine record_iface(self, step, values)
      import :: host_t, dp
      class(host_t), intent(inout) :: self
      integer, intent(in) :: step
      real(dp), intent(inout) :: values(:)
    end subroutine record_iface

    !> At the end (collective): the host's figures into run%result's extras (rank 0's count).
    subroutine summarize_iface(self, run)
      import :: host_t, host_run_t
      class(host_t), intent(inout) :: self
      type(host_run_t), intent(inout) :: run
    end subroutine summarize_iface

    !> On rank 0: the datasets and attributes of the run's file (diagnostics.h5 or truth.h5).
    subroutine write_output_iface(self, run, out)
      import :: host_t, host_run_t, h5_out_t
      class(host_t), intent(inout) :: self
      type(host_run_t), intent(in) :: run
      type(h5_out_t), intent(inout) :: out
    end subroutine write_output_iface
  end interface

contains

  !> The program: `PROG CONFIG.nml` runs, `PROG --defaults` prints every group with its
  !> defaults (the harness checks its keys against them), `PROG --print-config CONFIG.nml` the
  !> values a run of CONFIG.nml would use. Stops with the exit code.
  subroutine host_cli(host, prog)
    class(host_t), intent(inout) :: host
    character(len=*), intent(in) :: prog    !! the program's name, for messages
    character(len=4096) :: arg, config
    character(len=1024) :: errmsg
    integer :: code, ierr
    call MPI_Init(ierr)
    call get_command_argument(1, arg)
    if (command_argument_count() == 1 .and. arg == '--defaults') then
      call read_config(host, '', code, errmsg, output_unit)
    else if (command_argument_count() == 2 .and. arg == '--print-config') then
      call get_command_argument(2, config)
      call read_config(host, trim(config), code, errmsg, output_unit)
      if (code /= 0) then
        write (error_unit, '(a)') prog//': '//trim(errmsg)
        code = 1
      end if
    else if (command_argument_count() /= 1 .or. arg(1:1) == '-') then
      write (error_unit, '(a)') 'usage: '//prog//' CONFIG.nml | --defaults | --print-config CONFIG.nml'
      code = 2
    else
      call host_run(host, prog, trim(arg), code)
    end if
    call MPI_Finalize(ierr)
    if (code /= 0) stop code, quiet=.true.
  end subroutine host_cli

  !> Runs the host on the namelist file `path` over MPI_COMM_WORLD and writes result.json.
  subroutine host_run(host, prog, path, exit_code)
    class(host_t), intent(inout) :: host
    character(len=*), intent(in) :: prog    !! the program's name, for messages
    character(len=*), intent(in) :: path    !! the namelist file
    integer, intent(out) :: exit_code       !! 0: completed or failed (the outcome is in
                                            !! result.json), 1: an error (could not start or go on)
    type(host_run_t) :: run
    type(run_settings_t) :: s
    character(len=1024) :: errmsg
    character(len=256) :: finalize_msg
    integer :: stat, ierr
    logical :: network

    host%comm = MPI_COMM_WORLD
    call MPI_Comm_rank(host%comm, host%rank, ierr)
    call MPI_Comm_size(host%comm, host%nranks, ierr)
    run%t_start = wall_clock()
    run%result%host = host%name()
    run%result%n_ranks = host%nranks
    run%result%config_hash = hash_file(path)

    call read_config(host, path, stat, errmsg)
    s = host%settings()
    run%result%mode = s%mode
    if (s%mode == 'coarse') run%result%closure = s%closure
    run%result%seed = s%seed
    run%result%max_steps = s%n_steps
    run%result%n_columns = s%n_columns
    network = s%mode == 'coarse' .and. s%closure == 'nn'
    if (stat == 0) call host%setup(stat, errmsg)
    if (stat == 0 .and. network) call coupler_setup(host, path, run%result, stat, errmsg)
    if (share_error(stat /= 0, errmsg, host%comm)) then
      run%result%wall_s = wall_clock() - run%t_start
      call finish_run(prog, s%output_dir, host%rank, run%result, exit_code, errmsg)
      return
    end if

    call start_records(run%records, s, host%rank)
    call host%start(run)
    call run_steps(host, run, s)
    call host%summarize(run)
    call write_output(host, run, s, stat, errmsg)
    if (network) then
      call record_coupler_timers(run%result, host%comm)
      call colnn_coupler_finalize(finalize_msg, ierr)
    end if
    run%result%wall_s = wall_clock() - run%t_start
    if (stat /= 0) then
      call finish_run(prog, s%output_dir, host%rank, run%result, exit_code, errmsg)
      return
    end if
    run%result%io_s = run%t_io
    run%result%nn_s = run%t_nn
    run%result%dynamics_s = run%result%wall_s - run%result%nn_s - run%result%io_s
    call finish_run(prog, s%output_dir, host%rank, run%result, exit_code)
  end subroutine host_run

  !> The main loop: steps until the mode's last one or the first failure, the diagnostics
  !> records (coarse: step 0, every output_interval steps and the failing step) or the samples
  !> (truth: every sample_interval steps after the spin-up).
  subroutine run_steps(host, run, s)
    class(host_t), intent(inout) :: host
    type(host_run_t), intent(inout) :: run
    type(run_settings_t), intent(in) :: s
    integer :: step, total, stat
    logical :: truth
    character(len=1024) :: errmsg
    type(coupler_spec_t) :: spec
    type(failure_t) :: failure

    truth = s%mode == 'truth'
    total = s%n_steps
    if (truth) total = s%spinup_steps + s%n_steps
    if (.not. truth) call record(host, run, s, 0)
    run%result%status = 'completed'
    do step = 1, total
      call host%step(run, step, stat, errmsg)
      if (stat /= 0) then
        spec = host%coupler_spec()
        call fail_at(run, step, failure_t(.true., 'nn_error', spec%output_name, errmsg))
        exit
      end if
      if (.not. truth .and. step == s%inject_nan_step) &
        call host%inject(s%inject_nan_column, injected_value(s%inject_value))
      call host%check(step, failure)
      if (failure%failed) then
        call fail_at(run, step, failure)
        if (.not. truth) call record(host, run, s, step)
        exit
      end if
      if (truth) then
        if (step > s%spinup_steps .and. mod(step - s%spinup_steps, s%sample_interval) == 0) &
          call record(host, run, s, step)
      else if (mod(step, s%output_interval) == 0) then
        call record(host, run, s, step)
      end if
    end do
    if (run%result%status == 'completed') run%result%steps = total
    run%result%max_steps = total
  end subroutine run_steps

  subroutine fail_at(run, step, failure)
    type(host_run_t), intent(inout) :: run
    integer, intent(in) :: step
    type(failure_t), intent(in) :: failure
    run%failure = failure
    run%result%status = 'failed'
    run%result%steps = step
    run%result%failure_step = step
    run%result%reason = failure%reason
    run%result%variable = failure%variable
    run%result%message = failure%message
  end subroutine fail_at

  !> Room for every record the run can take (nothing is allocated in the loop).
  subroutine start_records(records, s, rank)
    type(records_t), intent(out) :: records
    type(run_settings_t), intent(in) :: s
    integer, intent(in) :: rank
    integer :: capacity
    if (s%mode == 'truth') then
      capacity = s%n_steps / s%sample_interval
    else
      capacity = s%n_steps / s%output_interval + 2     ! step 0 and a failing step
    end if
    allocate (records%time(capacity), source=ieee_nan())
    records%held = rank == 0
    allocate (records%values(s%record_size, merge(capacity, 1, records%held)), source=ieee_nan())
  end subroutine start_records

  !> Value `i` of every record so far, on the rank that holds them (empty elsewhere).
  function records_series(self, i) result(series)
    class(records_t), intent(in) :: self
    integer, intent(in) :: i                  !! the value's index in a record
    real(dp), allocatable :: series(:)
    if (self%held) then
      series = self%values(i, 1:self%n)
    else
      allocate (series(0))
    end if
  end function records_series

  !> One record after `step` (collective), timed as I/O; none beyond the capacity.
  subroutine record(host, run, s, step)
    class(host_t), intent(inout) :: host
    type(host_run_t), intent(inout) :: run
    type(run_settings_t), intent(in) :: s
    integer, intent(in) :: step
    real(dp) :: t0
    integer :: offset
    t0 = wall_clock()
    if (run%records%n >= size(run%records%time)) return
    run%records%n = run%records%n + 1
    offset = 0
    if (s%mode == 'truth') offset = s%spinup_steps   ! a sample's time counts from the spin-up's end
    run%records%time(run%records%n) = (step - offset) * s%dt
    call host%record(step, run%records%values(:, merge(run%records%n, 1, run%records%held)))
    run%t_io = run%t_io + (wall_clock() - t0)
  end subroutine record

  !> Rank 0 writes the run's HDF5 file (truth.h5 or diagnostics.h5, renamed into place when
  !> complete); stat and errmsg on every rank.
  subroutine write_output(host, run, s, stat, errmsg)
    class(host_t), intent(inout) :: host
    type(host_run_t), intent(inout) :: run
    type(run_settings_t), intent(in) :: s
    integer, intent(out) :: stat
    character(len=*), intent(inout) :: errmsg
    type(h5_out_t) :: out
    character(len=:), allocatable :: file
    real(dp) :: t0
    stat = 0
    if (host%rank == 0) then
      t0 = wall_clock()
      file = 'diagnostics.h5'
      if (s%mode == 'truth') file = 'truth.h5'
      call out%create(trim(s%output_dir)//'/'//file)
      call host%write_output(run, out)
      call out%commit(stat, errmsg)
      if (stat == 0) run%result%diagnostics = file
      run%t_io = run%t_io + (wall_clock() - t0)
    end if
    call bcast_int(stat, host%comm)
    if (stat /= 0) call bcast_str(errmsg, host%comm)
  end subroutine write_output

  !> One call of the coupler for this rank's columns, timed as the network's.
  subroutine run_network(self, inputs, outputs, column_offset, step, stat, errmsg)
    class(host_run_t), intent(inout) :: self
    real(wp), intent(in) :: inputs(:, :)      !! (features, columns)
    real(wp), intent(inout) :: outputs(:, :)  !! (outputs, columns)
    integer, intent(in) :: column_offset      !! the global index of the first column - 1
    integer, intent(in) :: step               !! the host's step (an ensemble's noise key)
    integer, intent(out) :: stat
    character(len=*), intent(inout) :: errmsg
    real(dp) :: t0
    t0 = wall_clock()
    call colnn_coupler_run(inputs, outputs, errmsg, stat, column_offset=column_offset, step=step)
    self%t_nn = self%t_nn + (wall_clock() - t0)
  end subroutine run_network

  ! ---------------------------------------------------------------------------------------
  ! configuration

  !> Reads the host's groups from `path` ('': none, the defaults) in the host's order: a group
  !> may be absent (its defaults), an unknown group or key or a bad value is an error, and so
  !> is a value the checks refuse. With echo_unit, each group is written there as it was
  !> taken (--defaults, --print-config). A group that cannot be read leaves the host's
  !> values as they were, but for what the host keeps for the error's own result.json.
  subroutine read_config(host, path, stat, errmsg, echo_unit)
    class(host_t), intent(inout) :: host
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer, intent(in), optional :: echo_unit
    character(len=GROUP_LEN), allocatable :: groups(:)
    logical, allocatable :: found(:)
    integer :: i, groups_stat, ios
    character(len=1024) :: groups_msg
    character(len=8) :: msg

    call host%groups(groups)
    allocate (found(size(groups) + 1), source=.false.)
    stat = 0
    errmsg = ''
    groups_stat = 0
    ! an unknown group is reported after the groups are read, so that the error's result.json
    ! lands in the output_dir the file names
    if (len(path) > 0) call check_groups(path, [character(len=GROUP_LEN) :: groups, &
                                         'colnn_coupler'], groups_stat, groups_msg, found)
    do i = 1, size(groups)
      if (len(path) > 0) call read_group(trim(groups(i)), found(i))
      if (stat /= 0) return
      if (present(echo_unit)) call host%group_io(trim(groups(i)), echo_unit, .false., ios, msg)
    end do
    if (groups_stat /= 0) then
      stat = groups_stat
      errmsg = groups_msg
    else if (len(path) > 0) then
      call validate(host, path, stat, errmsg)
    end if
  contains
    subroutine read_group(group, in_file)
      character(len=*), intent(in) :: group
      logical, intent(in) :: in_file        !! whether the file has the group
      integer :: u
      character(len=512) :: iomsg
      iomsg = ''
      open (newunit=u, file=path, status='old', action='read', iostat=stat, iomsg=iomsg)
      if (stat /= 0) then
        errmsg = 'cannot open '//trim(path)//': '//trim(iomsg)
        return
      end if
      call host%group_io(group, u, .true., stat, iomsg)
      close (u)
      if (stat < 0 .and. .not. in_file) then
        stat = 0    ! the group is not in the file: its defaults
      else if (stat < 0) then
        ! gfortran also ends here, keeping the defaults, when the group's last value cannot be
        ! read as its type (n_steps = 1.5 before '/')
        errmsg = trim(path)//': namelist &'//group//' could not be read to its end (a '// &
                 'missing /, the last line without a newline, or a last value of the wrong type)'
      else if (stat > 0) then
        errmsg = trim(path)//': namelist &'//group//': '//trim(iomsg)
      end if
    end subroutine read_group
  end subroutine read_config

  !> The host's checks, then those of the keys every host has.
  subroutine validate(host, path, stat, errmsg)
    class(host_t), intent(in) :: host
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(run_settings_t) :: s
    character(len=:), allocatable :: g
    call host%validate(path, stat, errmsg)
    if (stat /= 0) return
    s = host%settings()
    g = trim(s%run_group)
    stat = 1
    if (all(s%mode /= [character(len=16) :: 'truth', 'coarse'])) then
      errmsg = key_error(path, g, 'mode', "must be 'truth' or 'coarse', got '"//trim(s%mode)//"'")
    else if (s%n_steps < 1) then
      errmsg = key_error(path, g, 'n_steps', 'must be >= 1, got '//itoa(s%n_steps))
    else if (s%spinup_steps < 0) then
      errmsg = key_error(path, g, 'spinup_steps', 'must be >= 0')
    else if (s%output_interval < 1 .or. s%sample_interval < 1) then
      errmsg = key_error(path, g, 'output_interval, sample_interval', 'must be >= 1')
    else if (s%init_index < 1) then
      errmsg = key_error(path, g, 'init_index', 'must be >= 1 (Fortran order)')
    else if (len_trim(s%output_dir) == 0) then
      errmsg = key_error(path, g, 'output_dir', 'must not be empty')
    else if (s%inject_nan_step /= -1 .and. (s%inject_nan_column < 1 .or. &
                                            s%inject_nan_column > s%n_columns)) then
      errmsg = key_error(path, g, 'inject_nan_column', 'must be in 1 .. '//trim(s%columns_key))
    else if (.not. is_injectable(s%inject_value)) then
      errmsg = key_error(path, g, 'inject_value', "must be 'nan', 'inf' or '-inf'")
    else
      stat = 0
      errmsg = ''
    end if
  end subroutine validate

  !> The message for a refused value: "FILE: &GROUP: KEY WHAT".
  function key_error(path, group, key, what) result(msg)
    character(len=*), intent(in) :: path, group, key, what
    character(len=:), allocatable :: msg
    msg = trim(path)//': &'//group//': '//key//' '//what
  end function key_error

  ! ---------------------------------------------------------------------------------------
  ! the coupler

  subroutine coupler_setup(host, path, result, stat, errmsg)
    class(host_t), intent(in) :: host
    character(len=*), intent(in) :: path
    type(run_result_t), intent(inout) :: result
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(coupler_spec_t) :: spec
    type(colnn_coupler_config_t) :: ccfg
    spec = host%coupler_spec()
    ! unallocated declarations are absent arguments: nothing is checked
    call colnn_coupler_init(path, spec%n_in, spec%n_out, errmsg, stat, &
                            input_vars=spec%input_vars, output_vars=spec%output_vars)
    if (stat /= 0) then
      errmsg = trim(errmsg)//' ('//spec%passes//')'
      return
    end if
    ! the model hash: of the model file, or of an ensemble's list file
    call colnn_coupler_get_config(ccfg)
    if (len_trim(ccfg%model_file) > 0) result%model_hash = hash_file(ccfg%model_file)
    if (len_trim(ccfg%ensemble) > 0) result%model_hash = hash_file(ccfg%ensemble)
  end subroutine coupler_setup

  !> The coupler's own account of the network calls, into result.json's extras: calls and
  !> columns summed over the ranks, seconds of the slowest rank.
  subroutine record_coupler_timers(result, comm)
    type(run_result_t), intent(inout) :: result
    type(MPI_Comm), intent(in) :: comm
    integer(i8) :: counts(2), total(2)
    real(dp) :: seconds, slowest
    integer :: ierr
    call colnn_coupler_timers(counts(1), counts(2), seconds)
    call MPI_Allreduce(counts, total, 2, MPI_INTEGER8, MPI_SUM, comm, ierr)
    call MPI_Allreduce(seconds, slowest, 1, MPI_DOUBLE_PRECISION, MPI_MAX, comm, ierr)
    call result%add_extra('coupler_calls', real(total(1), dp))
    call result%add_extra('coupler_columns', real(total(2), dp))
    call result%add_extra('coupler_seconds', slowest)
  end subroutine record_coupler_timers
end module host_driver
