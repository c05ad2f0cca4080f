!> The driver of the toy hosts: what a host program does around its model. A host is a type
!> extending host_t (its configuration groups, checks, set-up, one step, failure checks,
!> diagnostics and output); host_cli and host_run do the rest, the same for every host:
!> the command line (CONFIG.nml | --defaults | --print-config CONFIG.nml), the strict namelist
!> reading, MPI, the coupler's set-up for closure = 'nn', the main loop with its steps-to-failure
!> bookkeeping, the timers, the HDF5 file's creation and result.json.
!>
!> Batches (coarse mode): one process runs n_runs independent runs of one configuration
!> (initial conditions, seeds). Each run is a member: a copy of the host holding that run's
!> state, set up and decomposed over the ranks exactly as the run alone is, and its host_run_t
!> (result, failure, records, timers). At every RK stage the active members write their network
!> inputs side by side into one array and the coupler is called once for all of them; the
!> library's batch-invariant forward pass gives every column the bits of the run alone, so every
!> run's result is bitwise that of the run alone. Each member keeps its own failure checks (one
!> reduction for all runs a step); a run that fails leaves the batch at once (its columns are
!> not sent to the network again) and writes its files then; the others go on.
module host_driver
  use, intrinsic :: iso_fortran_env, only: error_unit, output_unit
  use mpi_f08
  use colnn, only: wp
  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize, &
                           colnn_coupler_config_t, colnn_coupler_get_config, &
                           colnn_coupler_timers, colnn_fallback_monitor_t, &
                           colnn_coupler_fallback_monitor, colnn_coupler_uses_closure, &
                           colnn_coupler_save, colnn_coupler_online_stats
  use host_common
  use host_h5, only: h5_out_t
  use host_mpi, only: share_error, bcast_int, bcast_str
  use host_memory, only: memory_available_per_rank, bytes_text
  implicit none
  private

  public :: host_t, host_run_t, run_settings_t, coupler_spec_t, failure_t, records_t, &
            host_cli, host_run, key_error, failure_bcast

  integer, parameter, public :: GROUP_LEN = 16   !< the length of a namelist group's name
  !> the most runs in one batch: the length of the per-run namelist arrays
  integer, parameter, public :: MAX_RUNS = 64
  !> the figures a host's check_local hands the driver to reduce over the ranks
  integer, parameter, public :: N_CHECK_VALUES = 4
  !> the longest run directory (the harness refuses longer ones: a namelist read truncates)
  integer, parameter, public :: DIR_LEN = 512

  !> The batch keys of a host's run group (docs/host-protocol.md, "Batches"): n_runs runs in
  !> one process, run r from init_indices(r) (0: init_index) and seeds(r) (< 0: seed), its
  !> result.json and diagnostics in run_dirs(r). A host embeds one in its configuration and
  !> copies it to and from its namelist's locals.
  type, public :: batch_keys_t
    integer :: n_runs = 1
    integer :: init_indices(MAX_RUNS) = 0
    integer(i8) :: seeds(MAX_RUNS) = -1
    character(len=DIR_LEN) :: run_dirs(MAX_RUNS) = ''
    integer :: inject_nan_run = 1                !< the run inject_nan_step hits
    !> bytes a rank may take for the batch's state, records and work arrays; 0: the memory
    !> available on its node (MemAvailable) shared by the node's ranks
    integer(i8) :: max_batch_bytes = 0
  end type batch_keys_t

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
    character(len=16) :: inject_target = 'state'   !< 'state' | 'nn_input'
    !> truth: one online-training step of the coupler's network every online_interval steps
    !> after the spin-up (0: none), a checkpoint every checkpoint_interval steps (0: at the end)
    integer :: online_interval = 0, checkpoint_interval = 0
    integer :: record_size = 0                     !< values in one record of this mode
    type(batch_keys_t) :: batch
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
    procedure(for_run_iface), deferred :: for_run
    procedure(state_bytes_iface), deferred :: state_bytes
    procedure(coupler_spec_iface), deferred :: coupler_spec
    procedure(network_columns_iface), deferred :: network_columns
    procedure(n_stages_iface), deferred :: n_stages
    procedure(start_iface), deferred :: start
    procedure(stage_begin_iface), deferred :: stage_begin
    procedure(stage_end_iface), deferred :: stage_end
    procedure(inject_iface), deferred :: inject
    procedure(check_local_iface), deferred :: check_local
    procedure(check_finish_iface), deferred :: check_finish
    !> The host's own closure for the network's columns (per-column fallback and ramped
    !> coupling, &colnn_coupler fallback / ramp_steps): a host that has one overrides both.
    procedure :: has_closure => host_has_no_closure
    procedure :: closure_columns => host_no_closure_columns
    !> Online training in a truth run (online_interval): a host that knows the true closure of
    !> its network columns overrides both.
    procedure :: trains_online => host_does_not_train_online
    procedure :: online_pairs => host_no_online_pairs
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

    !> Stage `stage` of step `step` up to its closure (collective): the halos and, when the
    !> closure is the network, this rank's network inputs into nn_in (features, columns of
    !> network_columns); any other closure is taken here. The driver calls the coupler on the
    !> inputs of every run of the batch between stage_begin and stage_end.
    subroutine stage_begin_iface(self, step, stage, nn_in)
      import :: host_t, wp
      class(host_t), intent(inout) :: self
      integer, intent(in) :: step, stage
      !> this run's columns (none without the network): a contiguous part of the batch's array
      real(wp), intent(inout), contiguous :: nn_in(:, :)
    end subroutine stage_begin_iface

    !> The rest of the stage (collective): the closure from nn_out when it is the network, the
    !> tendencies and the stage's update.
    subroutine stage_end_iface(self, step, stage, nn_out)
      import :: host_t, wp
      class(host_t), intent(inout) :: self
      integer, intent(in) :: step, stage
      real(wp), intent(in), contiguous :: nn_out(:, :)  !! (outputs, this run's columns)
    end subroutine stage_end_iface

    !> The stages of one step (one network call each).
    integer function n_stages_iface(self)
      import :: host_t
      class(host_t), intent(in) :: self
    end function n_stages_iface

    !> After setup: this rank's network columns of the run and the global index of the first
    !> - 1 (an ensemble's noise key).
    subroutine network_columns_iface(self, n_columns, column_offset)
      import :: host_t
      class(host_t), intent(in) :: self
      integer, intent(out) :: n_columns, column_offset
    end subroutine network_columns_iface

    !> Before setup: the initial condition of the run this copy of the host will hold.
    subroutine for_run_iface(self, init_index, seed)
      import :: host_t, i8
      class(host_t), intent(inout) :: self
      integer, intent(in) :: init_index
      integer(i8), intent(in) :: seed
    end subroutine for_run_iface

    !> Before setup, from the configuration: the bytes this rank's setup will allocate for one
    !> run (state, work arrays, its share of the network's input and output arrays, what
    !> rank 0 gathers), the driver's records aside.
    function state_bytes_iface(self) result(bytes)
      import :: host_t, i8
      class(host_t), intent(in) :: self
      integer(i8) :: bytes
    end function state_bytes_iface

    !> Fault injection: `value` into the state at global column `column` (on its rank).
    subroutine inject_iface(self, column, value)
      import :: host_t, dp
      class(host_t), intent(inout) :: self
      integer, intent(in) :: column
      real(dp), intent(in) :: value
    end subroutine inject_iface

    !> The failure criteria after `step` on this rank's part of the state (no communication):
    !> severity 0 none, else the code of the most severe criterion that fired (higher first),
    !> and the host's figures for its message. The driver reduces both with MAX over the
    !> ranks, for every run of the batch in one collective, then calls check_finish.
    subroutine check_local_iface(self, step, severity, values)
      import :: host_t, dp, N_CHECK_VALUES
      class(host_t), intent(inout) :: self
      integer, intent(in) :: step
      integer, intent(out) :: severity
      real(dp), intent(out) :: values(N_CHECK_VALUES)
    end subroutine check_local_iface

    !> The failure from the reduced severity and values (collective: the same on every rank),
    !> and the host's criteria that need collectives of their own at their intervals.
    subroutine check_finish_iface(self, step, severity, values, failure)
      import :: host_t, dp, failure_t, N_CHECK_VALUES
      class(host_t), intent(inout) :: self
      integer, intent(in) :: step
      integer, intent(in) :: severity
      real(dp), intent(in) :: values(N_CHECK_VALUES)
      type(failure_t), intent(out) :: failure
    end subroutine check_finish_iface

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

  !> One run of a batch: a copy of the host holding the run's state, and its outcome.
  type :: member_t
    class(host_t), allocatable :: host
    type(host_run_t) :: run
    type(MPI_Comm) :: comm                  !< the host's communicator
    character(len=1024) :: dir = ''        !< its result.json and output file go here
    integer :: index = 1                    !< its place in the batch, 1 .. n_runs
    logical :: active = .false.             !< set up, and neither failed nor finished
    logical :: finished = .false.           !< its result.json is written
    integer :: ncol = 0                     !< its network columns on this rank
    integer :: column_offset = 0            !< the global index of the first of them - 1
    integer :: first_col = 0                !< at the current stage: its first column in the
                                            !< batch's network arrays - 1
    !> fallback / ramp: the run's verdict on its fallback columns, its count this step (this
    !> rank's), and the step's count over the ranks at every step (on every rank)
    type(colnn_fallback_monitor_t) :: monitor
    integer(i8) :: fallback_step = 0
    integer(i8), allocatable :: fallback_series(:)
    !> online training: the loss of each optimizer step (NaN: skipped), how many so far
    real(dp), allocatable :: online_losses(:)
    integer :: n_online = 0
  end type member_t

  !> Online training's arrays, sized at set-up: this rank's network columns (inputs, targets)
  !> and every rank's gathered in the global column order, so that every rank takes the same
  !> optimizer step on all columns (the weights stay equal on all ranks, and equal to one rank's)
  type :: online_arrays_t
    real(wp), allocatable :: local_in(:, :), local_target(:, :)
    real(wp), allocatable :: all_in(:, :), all_target(:, :), all_out(:, :)
    integer, allocatable :: in_counts(:), in_displs(:), out_counts(:), out_displs(:)
  end type online_arrays_t
  type(online_arrays_t), save :: online

  !> a run's network column calls a step (columns over all ranks times stages): what a step's
  !> fallback count is a share of
  integer(i8), save :: global_network_columns = 0

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
    ! --defaults and --print-config only read and write namelists: no MPI start (Open MPI's
    ! singleton start costs a third of a second, paid by every study task that asks for keys)
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
      call MPI_Init(ierr)
      call host_run(host, prog, trim(arg), code)
      call MPI_Finalize(ierr)
    end if
    if (code /= 0) stop code, quiet=.true.
  end subroutine host_cli

  !> Runs the host on the namelist file `path` over MPI_COMM_WORLD: the batch of its n_runs
  !> runs (one by default), each writing its result.json into its directory.
  subroutine host_run(host, prog, path, exit_code)
    class(host_t), intent(inout) :: host    !! the configuration read; each run holds a copy
    character(len=*), intent(in) :: prog    !! the program's name, for messages
    character(len=*), intent(in) :: path    !! the namelist file
    integer, intent(out) :: exit_code       !! 0: every run completed or failed (the outcome is
                                            !! in result.json), 1: a run could not start or go on
    type(member_t), allocatable :: members(:)
    type(run_settings_t) :: s
    type(run_result_t) :: common
    real(wp), allocatable :: nn_in(:, :), nn_out(:, :)
    character(len=1024) :: errmsg
    character(len=256) :: finalize_msg
    real(dp) :: t_start
    integer :: stat, ierr, r, n_runs, n_columns
    type(coupler_spec_t) :: spec
    logical :: network, coupled, per_run, closure
    type(colnn_coupler_config_t) :: ccfg
    real(wp), allocatable :: nn_closure(:, :)
    integer(i8) :: columns8

    host%comm = MPI_COMM_WORLD
    call MPI_Comm_rank(host%comm, host%rank, ierr)
    call MPI_Comm_size(host%comm, host%nranks, ierr)
    t_start = wall_clock()
    exit_code = 0
    common%host = host%name()
    common%n_ranks = host%nranks
    common%config_hash = hash_file(path)

    call read_config(host, path, stat, errmsg)
    s = host%settings()
    common%mode = s%mode
    if (s%mode == 'coarse') common%closure = s%closure
    common%max_steps = s%n_steps
    common%n_columns = s%n_columns
    network = s%mode == 'coarse' .and. s%closure == 'nn'
    n_runs = 1
    if (stat == 0) n_runs = s%batch%n_runs
    allocate (members(n_runs))
    do r = 1, n_runs
      members(r)%index = r
      members(r)%comm = host%comm
      ! a configuration refused as a whole answers in the batch's own directory
      members(r)%dir = s%output_dir
      if (stat == 0) members(r)%dir = run_dir(s, r, n_runs)
      members(r)%run%t_start = t_start
      members(r)%run%result = common
      members(r)%run%result%seed = run_seed(s, r)
    end do
    ! read_config takes the same decision on every rank; the estimate's reduction is collective
    if (stat == 0) call check_memory(host, s, n_runs, stat, errmsg)
    if (stat /= 0) then
      call refuse_batch(members, s, prog, host%rank, t_start, errmsg, exit_code)
      return
    end if

    ! each run its own copy of the host, set up alone: a run that cannot start (its initial
    ! condition, its memory) is an error of that run, the others go on
    do r = 1, n_runs
      allocate (members(r)%host, source=host)
      call members(r)%host%for_run(run_init_index(s, r), run_seed(s, r))
      call members(r)%host%setup(stat, errmsg)
      if (share_error(stat /= 0, errmsg, host%comm)) then
        if (n_runs > 1) errmsg = 'run '//itoa(r)//' (init_index '//itoa(run_init_index(s, r))// &
                                 '): '//trim(errmsg)
        call finish_error(members(r), prog, host%rank, t_start, errmsg, exit_code)
        deallocate (members(r)%host)
      else
        members(r)%active = .true.
      end if
    end do

    coupled = .false.
    per_run = .false.
    closure = .false.
    if (network .and. any(members%active)) then
      r = findloc(members%active, .true., 1)
      call coupler_setup(members(r)%host, path, common, stat, errmsg)
      coupled = stat == 0
      ! an ensemble's input noise is keyed by the global column: each run alone keeps its keys
      call colnn_coupler_get_config(ccfg)
      per_run = len_trim(ccfg%ensemble) > 0
      ! fallback and ramp take the host's closure; each run alone counts its fallback columns
      closure = coupled .and. colnn_coupler_uses_closure()
      if (closure) per_run = .true.
      if (closure .and. ccfg%ramp_steps > s%n_steps) then
        stat = 1
        errmsg = key_error(path, 'colnn_coupler', 'ramp_steps', 'is '//itoa(ccfg%ramp_steps)// &
                           ', longer than the run ('//trim(s%run_group)//' n_steps = '// &
                           itoa(s%n_steps)//')')
      end if
      spec = members(r)%host%coupler_spec()
      ! sized for every run at set-up: nothing is allocated in the steps
      n_columns = 0
      do r = 1, n_runs
        if (.not. members(r)%active) cycle
        call members(r)%host%network_columns(members(r)%ncol, members(r)%column_offset)
        members(r)%run%result%model_hash = common%model_hash
        n_columns = n_columns + members(r)%ncol
      end do
      if (stat == 0) then
        allocate (nn_in(spec%n_in, n_columns), nn_out(spec%n_out, n_columns), &
                  nn_closure(spec%n_out, merge(n_columns, 0, closure)), stat=stat)
        if (stat /= 0) errmsg = 'cannot allocate the network arrays of '//itoa(n_columns)// &
                                ' columns'
      end if
      if (stat == 0 .and. closure) then
        r = findloc(members%active, .true., 1)
        ! a step's fallback count is summed over its stages: its share is of the column calls
        columns8 = int(members(r)%ncol, i8) * members(r)%host%n_stages()
        call MPI_Allreduce(columns8, global_network_columns, 1, MPI_INTEGER8, MPI_SUM, &
                           host%comm, ierr)
        do r = 1, n_runs
          if (.not. members(r)%active) cycle
          members(r)%monitor = colnn_coupler_fallback_monitor()
          allocate (members(r)%fallback_series(0:s%n_steps), source=0_i8)
        end do
      end if
      if (share_error(stat /= 0, errmsg, host%comm)) then
        call refuse_batch(members, s, prog, host%rank, t_start, errmsg, exit_code)
        if (coupled) call colnn_coupler_finalize(finalize_msg, ierr)
        return
      end if
    else
      allocate (nn_in(0, 0), nn_out(0, 0), nn_closure(0, 0))
    end if

    if (network .and. coupled .and. ccfg%online_training) then
      errmsg = key_error(path, 'colnn_coupler', 'online_training', 'needs targets, which a '// &
                         "coarse run does not have: train online in a truth run (mode = "// &
                         "'truth', online_interval > 0)")
      call refuse_batch(members, s, prog, host%rank, t_start, errmsg, exit_code)
      call colnn_coupler_finalize(finalize_msg, ierr)
      return
    end if
    if (s%mode == 'truth' .and. s%online_interval > 0 .and. any(members%active)) then
      r = findloc(members%active, .true., 1)
      call online_setup(members(r), path, common, stat, errmsg)
      coupled = stat == 0
      if (share_error(stat /= 0, errmsg, host%comm)) then
        call refuse_batch(members, s, prog, host%rank, t_start, errmsg, exit_code)
        call colnn_coupler_finalize(finalize_msg, ierr)
        return
      end if
      allocate (members(r)%online_losses(s%n_steps / s%online_interval), source=ieee_nan())
    end if

    call run_batch(members, s, prog, network, per_run, nn_in, nn_out, nn_closure, closure, &
                   exit_code)
    if (coupled) call colnn_coupler_finalize(finalize_msg, ierr)
  end subroutine host_run

  !> The coupler for online training in a truth run: a single network with online_training,
  !> a host that gives (inputs, true outputs) of its network columns, the arrays of the step.
  subroutine online_setup(m, path, result, stat, errmsg)
    type(member_t), intent(inout) :: m
    character(len=*), intent(in) :: path
    type(run_result_t), intent(inout) :: result
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    type(coupler_spec_t) :: spec
    type(colnn_coupler_config_t) :: ccfg
    integer :: ncol, total, ierr, k
    integer, allocatable :: cols(:)
    stat = 1
    if (.not. m%host%trains_online()) then
      errmsg = key_error(path, trim(m%host%name())//'_run', 'online_interval', &
                         'this host cannot train online (it gives no true closure of its '// &
                         'network columns)')
      return
    end if
    call coupler_setup(m%host, path, result, stat, errmsg)
    if (stat /= 0) return
    call colnn_coupler_get_config(ccfg)
    if (.not. ccfg%online_training) then
      stat = 1
      errmsg = key_error(path, 'colnn_coupler', 'online_training', 'must be .true. for '// &
                         'online_interval > 0 (a truth run that trains the network)')
      return
    end if
    spec = m%host%coupler_spec()
    call m%host%network_columns(ncol, k)
    allocate (cols(m%host%nranks))
    call MPI_Allgather(ncol, 1, MPI_INTEGER, cols, 1, MPI_INTEGER, m%host%comm, ierr)
    total = sum(cols)
    online%in_counts = cols * spec%n_in
    online%out_counts = cols * spec%n_out
    allocate (online%in_displs(size(cols)), online%out_displs(size(cols)))
    do k = 1, size(cols)
      online%in_displs(k) = sum(online%in_counts(1:k - 1))
      online%out_displs(k) = sum(online%out_counts(1:k - 1))
    end do
    allocate (online%local_in(spec%n_in, ncol), online%local_target(spec%n_out, ncol), &
              online%all_in(spec%n_in, total), online%all_target(spec%n_out, total), &
              online%all_out(spec%n_out, total), stat=stat)
    if (stat /= 0) errmsg = 'cannot allocate the online-training arrays of '//itoa(total)// &
                            ' columns'
  end subroutine online_setup

  !> After `step` of a truth run with online training: every online_interval steps after the
  !> spin-up, one optimizer step on (inputs, true closure) of every network column; a
  !> checkpoint every checkpoint_interval steps (collective).
  subroutine online_batch(members, s, prog, step, exit_code)
    type(member_t), intent(inout) :: members(:)
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: prog
    integer, intent(in) :: step
    integer, intent(inout) :: exit_code
    character(len=1024) :: errmsg
    integer :: stat, ierr, r, after
    integer(i8) :: steps, skipped, skipped_before
    real(dp) :: loss, t0
    type(coupler_spec_t) :: spec
    after = step - s%spinup_steps
    if (after < 1) return
    do r = 1, size(members)
      if (.not. members(r)%active .or. .not. allocated(members(r)%online_losses)) cycle
      associate (m => members(r))
      if (mod(after, s%online_interval) == 0) then
        t0 = wall_clock()
        call m%host%online_pairs(online%local_in, online%local_target)
        if (s%inject_target == 'nn_target' .and. step == s%inject_nan_step) then
          ! a bad target at one update: the step must be skipped and counted
          associate (local => s%inject_nan_column - m%column_offset)
            if (local >= 1 .and. local <= size(online%local_target, 2)) &
              online%local_target(:, local) = real(injected_value(s%inject_value), wp)
          end associate
        end if
        if (m%host%nranks > 1) then
          call MPI_Allgatherv(online%local_in, size(online%local_in), mpi_wp(), online%all_in, &
                              online%in_counts, online%in_displs, mpi_wp(), m%comm, ierr)
          call MPI_Allgatherv(online%local_target, size(online%local_target), mpi_wp(), &
                              online%all_target, online%out_counts, online%out_displs, &
                              mpi_wp(), m%comm, ierr)
        else
          online%all_in = online%local_in
          online%all_target = online%local_target
        end if
        call colnn_coupler_online_stats(steps, skipped_before, loss)
        call colnn_coupler_run(online%all_in, online%all_out, errmsg, stat, &
                               targets=online%all_target, step=step)
        m%run%t_nn = m%run%t_nn + (wall_clock() - t0)
        if (share_error(stat /= 0, errmsg, m%comm)) then
          spec = m%host%coupler_spec()
          call fail_at(m%run, step, failure_t(.true., 'nn_error', spec%output_name, errmsg))
          call finish_member(m, s, prog, .true., exit_code)
          cycle
        end if
        call colnn_coupler_online_stats(steps, skipped, loss)
        m%n_online = m%n_online + 1
        if (m%n_online <= size(m%online_losses) .and. skipped == skipped_before) &
          m%online_losses(m%n_online) = loss
      end if
      if (s%checkpoint_interval > 0) then
        if (mod(after, s%checkpoint_interval) == 0) then
          call online_checkpoint(m, stat, errmsg)
          if (stat /= 0) call finish_error(m, prog, m%host%rank, m%run%t_start, errmsg, exit_code)
        end if
      end if
      end associate
    end do
  end subroutine online_batch

  !> Rank 0 writes the online-trained network with its optimizer state to online.colnn in the
  !> run's directory (atomically); stat and errmsg on every rank.
  subroutine online_checkpoint(m, stat, errmsg)
    type(member_t), intent(inout) :: m
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(dp) :: t0
    stat = 0
    errmsg = ''
    if (m%host%rank == 0) then
      t0 = wall_clock()
      call colnn_coupler_save(trim(m%dir)//'/online.colnn', errmsg, stat)
      m%run%t_io = m%run%t_io + (wall_clock() - t0)
    end if
    call bcast_int(stat, m%host%comm)
    if (stat /= 0) call bcast_str(errmsg, m%host%comm)
  end subroutine online_checkpoint

  !> The MPI datatype of the library's reals.
  function mpi_wp() result(t)
    type(MPI_Datatype) :: t
    if (storage_size(1.0_wp) == 64) then
      t = MPI_DOUBLE_PRECISION
    else
      t = MPI_REAL
    end if
  end function mpi_wp

  !> The run's directory: run_dirs(r), or output_dir for a run alone that names none.
  function run_dir(s, r, n_runs) result(dir)
    type(run_settings_t), intent(in) :: s
    integer, intent(in) :: r, n_runs
    character(len=1024) :: dir
    dir = s%batch%run_dirs(r)
    if (n_runs == 1 .and. len_trim(dir) == 0) dir = s%output_dir
  end function run_dir

  integer function run_init_index(s, r)
    type(run_settings_t), intent(in) :: s
    integer, intent(in) :: r
    run_init_index = s%batch%init_indices(r)
    if (run_init_index == 0) run_init_index = s%init_index
  end function run_init_index

  integer(i8) function run_seed(s, r)
    type(run_settings_t), intent(in) :: s
    integer, intent(in) :: r
    run_seed = s%batch%seeds(r)
    if (run_seed < 0) run_seed = s%seed
  end function run_seed

  !> An error of the whole batch before its first step: every run still active gets the error
  !> result, and a batch of several runs one in its output_dir too (where the harness looks
  !> for the batch's own answer).
  subroutine refuse_batch(members, s, prog, rank, t_start, errmsg, exit_code)
    type(member_t), intent(inout) :: members(:)
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: prog, errmsg
    integer, intent(in) :: rank
    real(dp), intent(in) :: t_start
    integer, intent(inout) :: exit_code
    type(run_result_t) :: batch_result
    integer :: r, code
    do r = 1, size(members)
      if (.not. members(r)%finished) call finish_error(members(r), prog, rank, t_start, errmsg, exit_code)
    end do
    if (size(members) > 1) then
      batch_result = members(1)%run%result
      call finish_run(prog, trim(s%output_dir), rank, batch_result, code, errmsg)
      exit_code = max(exit_code, code)
    end if
  end subroutine refuse_batch

  !> An error result for a run that could not start or go on (collective: rank 0 writes).
  subroutine finish_error(m, prog, rank, t_start, errmsg, exit_code)
    type(member_t), intent(inout) :: m
    character(len=*), intent(in) :: prog, errmsg
    integer, intent(in) :: rank
    real(dp), intent(in) :: t_start
    integer, intent(inout) :: exit_code
    integer :: code
    m%active = .false.
    m%finished = .true.
    m%run%result%wall_s = wall_clock() - t_start
    call finish_run(prog, trim(m%dir), rank, m%run%result, code, errmsg)
    exit_code = max(exit_code, code)
  end subroutine finish_error

  ! ---------------------------------------------------------------------------------------
  ! the batch's steps

  !> The main loop over the members still active: every step the stages with one network call
  !> for all of them, the injection, the checks (one reduction for all runs), the records
  !> (coarse: step 0, every output_interval steps and the failing step; truth: every
  !> sample_interval steps after the spin-up). A run that fails leaves the batch and writes its
  !> files at once; the others write theirs after the last step.
  subroutine run_batch(members, s, prog, network, per_run, nn_in, nn_out, nn_closure, closure, &
                       exit_code)
    type(member_t), intent(inout) :: members(:)
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: prog
    logical, intent(in) :: network
    logical, intent(in) :: per_run            !! call the coupler for each run alone
    !> (features, every run's columns): the network's inputs and outputs, the host's closure
    real(wp), intent(inout), contiguous :: nn_in(:, :), nn_out(:, :), nn_closure(:, :)
    logical, intent(in) :: closure            !! the coupler takes the host's closure
    integer, intent(inout) :: exit_code
    integer :: step, total, r, stat
    logical :: truth
    character(len=1024) :: errmsg

    truth = s%mode == 'truth'
    total = s%n_steps
    if (truth) total = s%spinup_steps + s%n_steps
    do r = 1, size(members)
      if (.not. members(r)%active) cycle
      members(r)%run%result%max_steps = total
      call start_records(members(r)%run%records, s, members(r)%host%rank)
      call members(r)%host%start(members(r)%run)
      if (.not. truth) call record(members(r), s, 0)
      members(r)%run%result%status = 'completed'
    end do
    do step = 1, total
      if (.not. any(members%active)) exit
      call step_batch(members, s, prog, step, network, per_run, nn_in, nn_out, nn_closure, &
                      closure, exit_code)
      if (closure) call fallback_batch(members, s, prog, step, exit_code)
      if (.not. truth .and. step == s%inject_nan_step .and. s%inject_target == 'state') then
        associate (m => members(s%batch%inject_nan_run))
          if (m%active) call m%host%inject(s%inject_nan_column, injected_value(s%inject_value))
        end associate
      end if
      call check_batch(members, s, prog, step, network, exit_code)
      if (truth) call online_batch(members, s, prog, step, exit_code)
      do r = 1, size(members)
        if (.not. members(r)%active) cycle
        if (truth) then
          if (step > s%spinup_steps .and. mod(step - s%spinup_steps, s%sample_interval) == 0) &
            call record(members(r), s, step)
        else if (mod(step, s%output_interval) == 0) then
          call record(members(r), s, step)
        end if
      end do
    end do
    do r = 1, size(members)
      if (.not. members(r)%active) cycle
      members(r)%run%result%steps = total
      if (allocated(members(r)%online_losses)) then
        call online_checkpoint(members(r), stat, errmsg)
        if (stat /= 0) then
          call finish_error(members(r), prog, members(r)%host%rank, members(r)%run%t_start, &
                            errmsg, exit_code)
          cycle
        end if
      end if
      call finish_member(members(r), s, prog, network, exit_code)
    end do
  end subroutine run_batch

  !> One step of every active run: at each stage, each run writes its network inputs into its
  !> own columns of nn_in, packed side by side in the order of the runs (a run that has left
  !> leaves no gap), the coupler runs once on all of them, each run takes its outputs.
  subroutine step_batch(members, s, prog, step, network, per_run, nn_in, nn_out, nn_closure, &
                        closure, exit_code)
    type(member_t), intent(inout) :: members(:)
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: prog
    integer, intent(in) :: step
    logical, intent(in) :: network, per_run, closure
    real(wp), intent(inout), contiguous :: nn_in(:, :), nn_out(:, :), nn_closure(:, :)
    integer, intent(inout) :: exit_code
    integer :: stage, r, used, n_stages
    n_stages = 0
    do r = 1, size(members)
      if (members(r)%active) n_stages = members(r)%host%n_stages()
    end do
    do stage = 1, n_stages
      used = 0
      do r = 1, size(members)
        if (.not. members(r)%active) cycle
        members(r)%first_col = used
        call members(r)%host%stage_begin(step, stage, nn_in(:, used + 1:used + members(r)%ncol))
        if (s%inject_target == 'nn_input' .and. s%inject_nan_step /= -1 .and. &
            step >= s%inject_nan_step .and. r == s%batch%inject_nan_run) then
          associate (local => s%inject_nan_column - members(r)%column_offset)
            if (local >= 1 .and. local <= members(r)%ncol) &
              nn_in(:, used + local) = real(injected_value(s%inject_value), wp)
          end associate
        end if
        if (closure) call members(r)%host%closure_columns(step, stage, &
                                                         nn_closure(:, used + 1:used + members(r)%ncol))
        used = used + members(r)%ncol
      end do
      if (network) call network_batch(members, s, prog, step, per_run, used, nn_in, nn_out, &
                                      nn_closure, closure, exit_code)
      do r = 1, size(members)
        if (.not. members(r)%active) cycle
        associate (first => members(r)%first_col)
          call members(r)%host%stage_end(step, stage, nn_out(:, first + 1:first + members(r)%ncol))
        end associate
      end do
    end do
  end subroutine step_batch

  !> The coupler on the first `used` columns, those of every active run. Its time is shared
  !> out among the runs in the call. When it fails, each run is called alone (the same bits: the
  !> forward pass is batch-invariant) to tell which runs failed; those leave the batch. An
  !> ensemble's noise is keyed by the global column, so there each run is called alone with its
  !> own column offset, the key of the run alone.
  subroutine network_batch(members, s, prog, step, per_run, used, nn_in, nn_out, nn_closure, &
                           closure, exit_code)
    type(member_t), intent(inout) :: members(:)
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: prog
    integer, intent(in) :: step
    logical, intent(in) :: per_run            !! call the coupler for each run alone
    integer, intent(in) :: used
    real(wp), intent(in) :: nn_in(:, :), nn_closure(:, :)
    real(wp), intent(inout) :: nn_out(:, :)
    logical, intent(in) :: closure            !! pass the host's closure (fallback, ramp)
    integer, intent(inout) :: exit_code
    character(len=1024) :: errmsg
    real(dp) :: t0, share
    integer :: stat, r, n_active, n_fallback
    type(coupler_spec_t) :: spec

    errmsg = ''
    stat = 0
    n_active = count(members%active)
    if (.not. per_run) then
      t0 = wall_clock()
      call colnn_coupler_run(nn_in(:, 1:used), nn_out(:, 1:used), errmsg, stat, step=step)
      share = (wall_clock() - t0) / max(n_active, 1)
      do r = 1, size(members)
        if (members(r)%active) members(r)%run%t_nn = members(r)%run%t_nn + share
      end do
      if (.not. share_error(stat /= 0, errmsg, members(1)%comm)) return
    end if
    ! each run alone: an ensemble, or a failed call to be told apart
    do r = 1, size(members)
      if (.not. members(r)%active) cycle
      associate (m => members(r), first => members(r)%first_col)
        t0 = wall_clock()
        if (closure) then
          call colnn_coupler_run(nn_in(:, first + 1:first + m%ncol), &
                                 nn_out(:, first + 1:first + m%ncol), errmsg, stat, &
                                 column_offset=m%column_offset, step=step, &
                                 closure=nn_closure(:, first + 1:first + m%ncol), &
                                 n_fallback=n_fallback)
          if (stat == 0) m%fallback_step = m%fallback_step + n_fallback
        else
          call colnn_coupler_run(nn_in(:, first + 1:first + m%ncol), &
                                 nn_out(:, first + 1:first + m%ncol), errmsg, stat, &
                                 column_offset=m%column_offset, step=step)
        end if
        m%run%t_nn = m%run%t_nn + (wall_clock() - t0)
        if (share_error(stat /= 0, errmsg, m%comm)) then
          spec = m%host%coupler_spec()
          call fail_at(m%run, step, failure_t(.true., 'nn_error', spec%output_name, errmsg))
          call finish_member(m, s, prog, .true., exit_code)
        end if
      end associate
    end do
  end subroutine network_batch

  !> After `step` with fallback or ramp: every active run's fallback columns of the step (summed
  !> over its stages and, in one reduction for all runs, over the ranks) into its series and
  !> its monitor; a run whose monitor says too many columns fell back for too long fails
  !> (reason 'fallback').
  subroutine fallback_batch(members, s, prog, step, exit_code)
    type(member_t), intent(inout) :: members(:)
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: prog
    integer, intent(in) :: step
    integer, intent(inout) :: exit_code
    integer(i8) :: counts(MAX_RUNS)
    character(len=512) :: errmsg
    type(coupler_spec_t) :: spec
    integer :: r, n, ierr, flg
    n = size(members)
    counts = 0
    do r = 1, n
      if (.not. members(r)%active) cycle
      counts(r) = members(r)%fallback_step
      members(r)%fallback_step = 0
    end do
    r = findloc(members%active, .true., 1)
    if (r == 0) return
    if (members(r)%host%nranks > 1) &
      call MPI_Allreduce(MPI_IN_PLACE, counts(1:n), n, MPI_INTEGER8, MPI_SUM, &
                         members(r)%host%comm, ierr)
    do r = 1, n
      if (.not. members(r)%active) cycle
      if (step <= ubound(members(r)%fallback_series, 1)) members(r)%fallback_series(step) = counts(r)
      call members(r)%monitor%update(counts(r), global_network_columns, errmsg, flg)
      if (flg /= 0) then
        spec = members(r)%host%coupler_spec()
        call fail_at(members(r)%run, step, failure_t(.true., 'fallback', spec%output_name, errmsg))
        if (s%mode == 'coarse') call record(members(r), s, step)
        call finish_member(members(r), s, prog, .true., exit_code)
      end if
    end do
  end subroutine fallback_batch

  !> host_t's default: no true closure of its network columns (no online training).
  logical function host_does_not_train_online(self)
    class(host_t), intent(in) :: self
    host_does_not_train_online = .false.
  end function host_does_not_train_online

  subroutine host_no_online_pairs(self, nn_in, targets)
    class(host_t), intent(inout) :: self
    real(wp), intent(inout), contiguous :: nn_in(:, :), targets(:, :)
    nn_in = ieee_nan()
    targets = ieee_nan()
  end subroutine host_no_online_pairs

  !> host_t's default: no closure of its own (fallback and ramp are refused at init).
  logical function host_has_no_closure(self)
    class(host_t), intent(in) :: self
    host_has_no_closure = .false.
  end function host_has_no_closure

  subroutine host_no_closure_columns(self, step, stage, closure)
    class(host_t), intent(inout) :: self
    integer, intent(in) :: step, stage
    real(wp), intent(inout), contiguous :: closure(:, :)
    closure = ieee_nan()
  end subroutine host_no_closure_columns

  !> The failure checks of every active run after `step`: each run's local criteria, one
  !> reduction over the ranks for all of them, then each run's verdict. A failed run takes its
  !> record of the failing step and leaves the batch.
  subroutine check_batch(members, s, prog, step, network, exit_code)
    type(member_t), intent(inout) :: members(:)
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: prog
    integer, intent(in) :: step
    logical, intent(in) :: network
    integer, intent(inout) :: exit_code
    ! per run: the severity (exact as a double), then the host's values; fixed size, so that
    ! no step allocates
    real(dp) :: flags(1 + N_CHECK_VALUES, MAX_RUNS)
    type(failure_t) :: failure
    integer :: r, severity, n, ierr
    n = size(members)
    flags(:, 1:n) = -huge(1.0_dp)
    do r = 1, n
      if (.not. members(r)%active) cycle
      call members(r)%host%check_local(step, severity, flags(2:, r))
      flags(1, r) = severity
    end do
    r = findloc(members%active, .true., 1)
    if (r == 0) return
    if (members(r)%host%nranks > 1) &
      call MPI_Allreduce(MPI_IN_PLACE, flags(:, 1:n), size(flags(:, 1:n)), MPI_DOUBLE_PRECISION, &
                         MPI_MAX, members(r)%host%comm, ierr)
    do r = 1, n
      if (.not. members(r)%active) cycle
      call members(r)%host%check_finish(step, nint(flags(1, r)), flags(2:, r), failure)
      if (failure%failed) then
        call fail_at(members(r)%run, step, failure)
        if (s%mode == 'coarse') call record(members(r), s, step)
        call finish_member(members(r), s, prog, network, exit_code)
      end if
    end do
  end subroutine check_batch

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

  !> A run's end (collective): its summary, output file and result.json; it leaves the batch.
  !> Written when the run ends, a failed run's at its failure: its files are there even when a
  !> later run's error or a time limit stops the batch.
  subroutine finish_member(m, s, prog, network, exit_code)
    type(member_t), intent(inout) :: m
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: prog
    logical, intent(in) :: network
    integer, intent(inout) :: exit_code
    character(len=1024) :: errmsg
    integer :: stat, code
    m%active = .false.
    m%finished = .true.
    call m%host%summarize(m%run)
    if (allocated(m%online_losses)) call online_extras(m)
    if (allocated(m%fallback_series)) then
      call m%run%result%add_extra('fallback_columns', real(m%monitor%total, dp))
      call m%run%result%add_extra('fallback_steps', real(m%monitor%steps_with_fallback, dp))
      call m%run%result%add_extra('fallback_max_share', real(m%monitor%max_step_share, dp))
    end if
    call write_output(m, s, stat, errmsg)
    if (network) call record_coupler_timers(m%run%result, m%host%comm)
    m%run%result%wall_s = wall_clock() - m%run%t_start
    if (stat /= 0) then
      call finish_run(prog, trim(m%dir), m%host%rank, m%run%result, code, errmsg)
    else
      m%run%result%io_s = m%run%t_io
      m%run%result%nn_s = m%run%t_nn
      m%run%result%dynamics_s = m%run%result%wall_s - m%run%result%nn_s - m%run%result%io_s
      call finish_run(prog, trim(m%dir), m%host%rank, m%run%result, code)
    end if
    exit_code = max(exit_code, code)
  end subroutine finish_member

  !> Online training's figures into result.json: optimizer steps taken and skipped, the loss
  !> of the first and last steps taken, and the model file written.
  subroutine online_extras(m)
    type(member_t), intent(inout) :: m
    integer(i8) :: steps, skipped
    real(dp) :: loss
    call colnn_coupler_online_stats(steps, skipped, loss)
    call m%run%result%add_extra('online_steps', real(steps, dp))
    call m%run%result%add_extra('online_skipped', real(skipped, dp))
    call m%run%result%add_extra('online_first_loss', first_finite(m%online_losses(1:m%n_online)))
    call m%run%result%add_extra('online_last_loss', loss)
  contains
    real(dp) function first_finite(x)
      real(dp), intent(in) :: x(:)
      integer :: k
      first_finite = ieee_nan()
      do k = 1, size(x)
        if (is_finite(x(k))) then
          first_finite = x(k)
          return
        end if
      end do
    end function first_finite
  end subroutine online_extras

  !> The values a record holds at most for the run.
  integer function record_capacity(s)
    type(run_settings_t), intent(in) :: s
    if (s%mode == 'truth') then
      record_capacity = s%n_steps / s%sample_interval
    else
      record_capacity = s%n_steps / s%output_interval + 2     ! step 0 and a failing step
    end if
  end function record_capacity

  !> Room for every record the run can take (nothing is allocated in the loop).
  subroutine start_records(records, s, rank)
    type(records_t), intent(out) :: records
    type(run_settings_t), intent(in) :: s
    integer, intent(in) :: rank
    integer :: capacity
    capacity = record_capacity(s)
    allocate (records%time(capacity), source=ieee_nan())
    records%held = rank == 0
    allocate (records%values(s%record_size, merge(capacity, 1, records%held)), source=ieee_nan())
  end subroutine start_records

  !> Refuses a batch whose estimated memory on some rank (n_runs times one run's state, work
  !> arrays and records) is more than max_batch_bytes, or than the memory available to the
  !> rank when that is 0 (collective).
  subroutine check_memory(host, s, n_runs, stat, errmsg)
    class(host_t), intent(inout) :: host
    type(run_settings_t), intent(in) :: s
    integer, intent(in) :: n_runs
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer(i8) :: per_run, need, limit
    integer :: ierr
    stat = 0
    per_run = host%state_bytes() + 8_i8 * record_capacity(s) * &
              merge(s%record_size + 1, 1, host%rank == 0)
    call MPI_Allreduce(MPI_IN_PLACE, per_run, 1, MPI_INTEGER8, MPI_MAX, host%comm, ierr)
    need = per_run * n_runs
    limit = s%batch%max_batch_bytes
    if (limit == 0) limit = memory_available_per_rank(host%comm)
    if (limit <= 0 .or. need <= limit) return
    stat = 1
    errmsg = 'n_runs = '//itoa(n_runs)//' needs about '//bytes_text(need)//' on a rank ('// &
             bytes_text(per_run)//' a run), more than '
    if (s%batch%max_batch_bytes > 0) then
      errmsg = trim(errmsg)//' max_batch_bytes = '//bytes_text(limit)
    else
      errmsg = trim(errmsg)//' the memory available to a rank ('//bytes_text(limit)//')'
    end if
    errmsg = trim(errmsg)//': run fewer runs in a batch (or fewer columns)'
  end subroutine check_memory

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

  !> One record of a run after `step` (collective), timed as I/O; none beyond the capacity.
  subroutine record(m, s, step)
    type(member_t), intent(inout) :: m
    type(run_settings_t), intent(in) :: s
    integer, intent(in) :: step
    real(dp) :: t0
    integer :: offset
    t0 = wall_clock()
    associate (records => m%run%records)
    if (records%n >= size(records%time)) return
    records%n = records%n + 1
    offset = 0
    if (s%mode == 'truth') offset = s%spinup_steps   ! a sample's time counts from the spin-up's end
    records%time(records%n) = (step - offset) * s%dt
    call m%host%record(step, records%values(:, merge(records%n, 1, records%held)))
    end associate
    m%run%t_io = m%run%t_io + (wall_clock() - t0)
  end subroutine record

  !> Rank 0 writes the run's HDF5 file (truth.h5 or diagnostics.h5, renamed into place when
  !> complete) into its directory; stat and errmsg on every rank.
  subroutine write_output(m, s, stat, errmsg)
    type(member_t), intent(inout) :: m
    type(run_settings_t), intent(in) :: s
    integer, intent(out) :: stat
    character(len=*), intent(inout) :: errmsg
    type(h5_out_t) :: out
    character(len=:), allocatable :: file
    real(dp) :: t0
    integer :: i
    stat = 0
    if (m%host%rank == 0) then
      t0 = wall_clock()
      file = 'diagnostics.h5'
      if (s%mode == 'truth') file = 'truth.h5'
      call out%create(trim(m%dir)//'/'//file)
      call m%host%write_output(m%run, out)
      if (allocated(m%online_losses) .and. m%n_online > 0) then
        ! the loss of every online optimizer step (NaN: skipped), by host step after the spin-up
        call out%dim('online_update_step', [(real(i * s%online_interval, dp), &
                                             i = 1, m%n_online)])
        call out%put1('online_loss', m%online_losses(1:m%n_online), 'online_update_step')
      end if
      if (allocated(m%fallback_series)) then
        ! every step's fallback columns (step 0: none), on the host's own time axis
        call out%dim('fallback_step', [(real(i, dp), i = 0, m%run%result%steps)])
        call out%put1('fallback_columns', real(m%fallback_series(0:m%run%result%steps), dp), &
                      'fallback_step')
      end if
      call out%commit(stat, errmsg)
      if (stat == 0) m%run%result%diagnostics = file
      m%run%t_io = m%run%t_io + (wall_clock() - t0)
    end if
    call bcast_int(stat, m%host%comm)
    if (stat /= 0) call bcast_str(errmsg, m%host%comm)
  end subroutine write_output

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
      errmsg = key_error(path, g, 'inject_value', "must be 'nan', 'inf', '-inf' or a number, "// &
                         "got '"//trim(s%inject_value)//"'")
    else if (s%online_interval < 0 .or. s%checkpoint_interval < 0) then
      errmsg = key_error(path, g, 'online_interval, checkpoint_interval', 'must be >= 0 '// &
                         '(0: no online training; checkpoint at the end only)')
    else if (s%online_interval > 0 .and. s%mode /= 'truth') then
      errmsg = key_error(path, g, 'online_interval', "needs mode = 'truth' (only a truth run "// &
                         'knows the targets)')
    else if (s%online_interval > s%n_steps) then
      errmsg = key_error(path, g, 'online_interval', 'is '//itoa(s%online_interval)// &
                         ', longer than the run (n_steps = '//itoa(s%n_steps)//')')
    else if (all(s%inject_target /= [character(len=16) :: 'state', 'nn_input', 'nn_target'])) then
      errmsg = key_error(path, g, 'inject_target', "must be 'state', 'nn_input' or "// &
                         "'nn_target', got '"//trim(s%inject_target)//"'")
    else if (s%inject_target == 'nn_target' .and. s%inject_nan_step /= -1 .and. &
             .not. (s%mode == 'truth' .and. s%online_interval > 0)) then
      errmsg = key_error(path, g, 'inject_target', "'nn_target' needs a truth run that "// &
                         'trains online (online_interval > 0)')
    else if (s%inject_target == 'nn_input' .and. s%inject_nan_step /= -1 .and. &
             .not. (s%mode == 'coarse' .and. s%closure == 'nn')) then
      errmsg = key_error(path, g, 'inject_target', "'nn_input' needs a coarse run with "// &
                         "closure = 'nn'")
    else
      call validate_batch(s, path, stat, errmsg)
    end if
  end subroutine validate

  !> The batch keys: n_runs in 1 .. MAX_RUNS (1 in truth mode), each run's initial condition
  !> and a directory of its own.
  subroutine validate_batch(s, path, stat, errmsg)
    type(run_settings_t), intent(in) :: s
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    character(len=:), allocatable :: g
    integer :: r, q, n
    g = trim(s%run_group)
    n = s%batch%n_runs
    stat = 1
    if (n < 1 .or. n > MAX_RUNS) then
      errmsg = key_error(path, g, 'n_runs', 'must be in 1 .. '//itoa(MAX_RUNS)//' (the most '// &
                         'runs one process holds), got '//itoa(n))
      return
    else if (n > 1 .and. s%mode /= 'coarse') then
      errmsg = key_error(path, g, 'n_runs', "> 1 needs mode = 'coarse' (a truth run is one run)")
      return
    else if (s%batch%inject_nan_run < 1 .or. s%batch%inject_nan_run > n) then
      errmsg = key_error(path, g, 'inject_nan_run', 'must be in 1 .. n_runs = '//itoa(n))
      return
    else if (s%batch%max_batch_bytes < 0) then
      errmsg = key_error(path, g, 'max_batch_bytes', 'must be >= 0 (0: the memory available)')
      return
    end if
    do r = 1, n
      if (s%batch%init_indices(r) < 0) then
        errmsg = key_error(path, g, 'init_indices('//itoa(r)//')', 'must be >= 1 (0: '// &
                           'init_index), got '//itoa(s%batch%init_indices(r)))
        return
      else if (n > 1 .and. len_trim(s%batch%run_dirs(r)) == 0) then
        errmsg = key_error(path, g, 'run_dirs('//itoa(r)//')', 'must name the directory of '// &
                           'run '//itoa(r)//' (n_runs = '//itoa(n)//')')
        return
      end if
      do q = 1, r - 1
        if (n > 1 .and. s%batch%run_dirs(q) == s%batch%run_dirs(r)) then
          errmsg = key_error(path, g, 'run_dirs('//itoa(r)//')', 'is also run_dirs('// &
                             itoa(q)//'): every run needs a directory of its own')
          return
        end if
      end do
    end do
    stat = 0
    errmsg = ''
  end subroutine validate_batch

  !> The message for a refused value: "FILE: &GROUP: KEY WHAT".
  !> Rank 0's verdict to every rank (collective): a check decided on rank 0 (its gathered
  !> state) fails the run on every rank with rank 0's reason, variable and message.
  subroutine failure_bcast(failure, comm)
    type(failure_t), intent(inout) :: failure
    type(MPI_Comm), intent(in) :: comm
    integer :: flag
    flag = merge(1, 0, failure%failed)
    call bcast_int(flag, comm)
    if (flag == 0) return
    call bcast_str(failure%reason, comm)
    call bcast_str(failure%variable, comm)
    call bcast_str(failure%message, comm)
    failure%failed = .true.
  end subroutine failure_bcast

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
                            input_vars=spec%input_vars, output_vars=spec%output_vars, &
                            host_closure=host%has_closure())
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
