!> The C binding (include/colnn.h). Every call returns a status (0 = success) and, where it can
!> fail, writes a NUL-terminated message into the caller's `errmsg` buffer. A model handle is an
!> opaque pointer; one handle must not be used by two threads at once (its workspace is shared),
!> separate handles can.
module colnn_c_api
  use, intrinsic :: iso_c_binding
  use colnn_kinds, only: wp, i8
  use colnn_status
  use colnn_strings, only: str
  use colnn_network, only: network_t
  use colnn_c_strings, only: c_to_f_string, f_to_c_buffer
  use colnn_ensemble, only: ensemble_t
  use colnn_trainer, only: trainer_t
  use colnn_spec, only: layer_spec_t
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use colnn, only: colnn_version
  use colnn_blas, only: invariant_kernel_name
  implicit none
  private

  !> A model handle: the network, and the trainer that holds its training state (the caches of
  !> colnn_forward_train/colnn_backward, the optimizer and its state)
  type :: handle_box_t
    type(network_t) :: net
    type(trainer_t) :: trainer
  end type handle_box_t

  type :: ensemble_box_t
    type(ensemble_t) :: ens
  end type ensemble_box_t

  public :: c_colnn_save_checkpoint, c_colnn_train_targets
  public :: c_colnn_train_configure, c_colnn_train_step, c_colnn_train_epoch, c_colnn_evaluate
  public :: c_colnn_forward_train, c_colnn_backward, c_colnn_num_trainable, c_colnn_get_params, &
            c_colnn_set_params, c_colnn_get_grads
  public :: c_colnn_ensemble_load, c_colnn_ensemble_free, c_colnn_ensemble_set_noise, &
            c_colnn_ensemble_forward, c_colnn_ensemble_info
  public :: c_colnn_load, c_colnn_save, c_colnn_free, c_colnn_forward, c_colnn_num_inputs, &
            c_colnn_num_outputs, c_colnn_num_layers, c_colnn_num_params, c_colnn_real_bytes, &
            c_colnn_set_check_finite, c_colnn_layer_info, c_colnn_version
  public :: c_colnn_set_batch_invariant, c_colnn_ensemble_set_batch_invariant, &
            c_colnn_batch_invariant_kernel

contains

  logical function get_net(handle, box)
    type(c_ptr), intent(in), value :: handle
    type(handle_box_t), pointer, intent(out) :: box
    get_net = c_associated(handle)
    if (get_net) call c_f_pointer(handle, box)
  end function get_net

  !> int colnn_load(const char *path, colnn_model **model, char *errmsg, size_t errmsg_len)
  integer(c_int) function c_colnn_load(path, handle, errmsg, errmsg_len) &
      bind(C, name='colnn_load') result(stat)
    character(kind=c_char), intent(in) :: path(*)
    type(c_ptr), intent(out) :: handle
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    type(layer_spec_t), allocatable :: training
    character(len=1024) :: msg
    integer :: s
    handle = c_null_ptr
    allocate (box)
    call box%net%load(c_to_f_string(path), s, msg, training=training)
    if (s == 0 .and. allocated(training)) then
      training%source = c_to_f_string(path)
      call box%trainer%restore(training, box%net%num_trainable(), s, msg)
    end if
    stat = int(s, c_int)
    if (s /= 0) then
      call f_to_c_buffer(msg, errmsg, errmsg_len)
      call box%net%destroy()
      deallocate (box)
      return
    end if
    call f_to_c_buffer('', errmsg, errmsg_len)
    handle = c_loc(box)
  end function c_colnn_load

  !> int colnn_save(colnn_model *model, const char *path, char *errmsg, size_t errmsg_len)
  integer(c_int) function c_colnn_save(handle, path, errmsg, errmsg_len) &
      bind(C, name='colnn_save') result(stat)
    type(c_ptr), intent(in), value :: handle
    character(kind=c_char), intent(in) :: path(*)
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    character(len=1024) :: msg
    integer :: s
    if (.not. get_net(handle, box)) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_save: null model handle', errmsg, errmsg_len)
      return
    end if
    call box%net%save(c_to_f_string(path), s, msg)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_save

  !> void colnn_free(colnn_model *model)
  subroutine c_colnn_free(handle) bind(C, name='colnn_free')
    type(c_ptr), intent(in), value :: handle
    type(handle_box_t), pointer :: box
    if (.not. get_net(handle, box)) return
    call box%net%destroy()
    deallocate (box)
  end subroutine c_colnn_free

  !> int colnn_forward(colnn_model *model, const colnn_real *x, int n_columns, colnn_real *y,
  !>                   char *errmsg, size_t errmsg_len)
  !> x is (n_inputs, n_columns) column-major, i.e. C/numpy x[n_columns][n_inputs]; y likewise.
  integer(c_int) function c_colnn_forward(handle, x, n_columns, y, errmsg, errmsg_len) &
      bind(C, name='colnn_forward') result(stat)
    type(c_ptr), intent(in), value :: handle
    type(c_ptr), intent(in), value :: x, y
    integer(c_int), intent(in), value :: n_columns
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    real(wp), pointer :: xf(:, :), yf(:, :)
    character(len=1024) :: msg
    integer :: s
    if (.not. get_net(handle, box)) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_forward: null model handle', errmsg, errmsg_len)
      return
    end if
    if (n_columns < 1) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_forward: n_columns must be >= 1, got '//str(int(n_columns)), &
                         errmsg, errmsg_len)
      return
    end if
    if (.not. c_associated(x) .or. .not. c_associated(y)) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_forward: null input or output pointer', errmsg, errmsg_len)
      return
    end if
    call c_f_pointer(x, xf, [box%net%n_inputs, int(n_columns)])
    call c_f_pointer(y, yf, [box%net%n_outputs, int(n_columns)])
    call box%net%forward(xf, yf, s, msg)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_forward

  integer(c_int) function c_colnn_num_inputs(handle) bind(C, name='colnn_num_inputs') result(n)
    type(c_ptr), intent(in), value :: handle
    type(handle_box_t), pointer :: box
    n = -1
    if (get_net(handle, box)) n = int(box%net%n_inputs, c_int)
  end function c_colnn_num_inputs

  integer(c_int) function c_colnn_num_outputs(handle) bind(C, name='colnn_num_outputs') result(n)
    type(c_ptr), intent(in), value :: handle
    type(handle_box_t), pointer :: box
    n = -1
    if (get_net(handle, box)) n = int(box%net%n_outputs, c_int)
  end function c_colnn_num_outputs

  integer(c_int) function c_colnn_num_layers(handle) bind(C, name='colnn_num_layers') result(n)
    type(c_ptr), intent(in), value :: handle
    type(handle_box_t), pointer :: box
    n = -1
    if (get_net(handle, box)) n = int(box%net%n_layers, c_int)
  end function c_colnn_num_layers

  integer(c_int64_t) function c_colnn_num_params(handle) bind(C, name='colnn_num_params') result(n)
    type(c_ptr), intent(in), value :: handle
    type(handle_box_t), pointer :: box
    n = -1
    if (get_net(handle, box)) n = int(box%net%num_params(), c_int64_t)
  end function c_colnn_num_params

  !> Bytes of colnn_real in this build: 4 (single) or 8 (double).
  integer(c_int) function c_colnn_real_bytes() bind(C, name='colnn_real_bytes') result(n)
    real(wp) :: x
    n = int(storage_size(x) / 8, c_int)
  end function c_colnn_real_bytes

  integer(c_int) function c_colnn_set_check_finite(handle, flag) &
      bind(C, name='colnn_set_check_finite') result(stat)
    type(c_ptr), intent(in), value :: handle
    integer(c_int), intent(in), value :: flag
    type(handle_box_t), pointer :: box
    stat = COLNN_ERR_ARGUMENT
    if (.not. get_net(handle, box)) return
    box%net%check_finite = flag /= 0
    stat = COLNN_OK
  end function c_colnn_set_check_finite

  !> int colnn_set_batch_invariant(colnn_model *m, int flag): flag /= 0: each column's outputs
  !> are the same bits whatever the number of columns per call (see colnn.h)
  integer(c_int) function c_colnn_set_batch_invariant(handle, flag) &
      bind(C, name='colnn_set_batch_invariant') result(stat)
    type(c_ptr), intent(in), value :: handle
    integer(c_int), intent(in), value :: flag
    type(handle_box_t), pointer :: box
    stat = COLNN_ERR_ARGUMENT
    if (.not. get_net(handle, box)) return
    call box%net%set_batch_invariant(flag /= 0)
    stat = COLNN_OK
  end function c_colnn_set_batch_invariant

  !> int colnn_ensemble_set_batch_invariant(colnn_ensemble *e, int flag): for every member
  integer(c_int) function c_colnn_ensemble_set_batch_invariant(handle, flag) &
      bind(C, name='colnn_ensemble_set_batch_invariant') result(stat)
    type(c_ptr), intent(in), value :: handle
    integer(c_int), intent(in), value :: flag
    type(ensemble_box_t), pointer :: box
    stat = COLNN_ERR_ARGUMENT
    if (.not. c_associated(handle)) return
    call c_f_pointer(handle, box)
    call box%ens%set_batch_invariant(flag /= 0)
    stat = COLNN_OK
  end function c_colnn_ensemble_set_batch_invariant

  !> void colnn_batch_invariant_kernel(char *buf, size_t len): the instruction set of the
  !> batch-invariant kernel on this machine ('avx512', 'avx2' or 'generic')
  subroutine c_colnn_batch_invariant_kernel(buf, buflen) bind(C, name='colnn_batch_invariant_kernel')
    character(kind=c_char), intent(out) :: buf(*)
    integer(c_size_t), intent(in), value :: buflen
    call f_to_c_buffer(invariant_kernel_name(), buf, buflen)
  end subroutine c_colnn_batch_invariant_kernel

  !> int colnn_layer_info(model, index (1-based), char *type, size_t type_len, char *name,
  !>                      size_t name_len, int *n_in, int *n_out)
  integer(c_int) function c_colnn_layer_info(handle, idx, type_buf, type_len, name_buf, &
                                             name_len, n_in, n_out) &
      bind(C, name='colnn_layer_info') result(stat)
    type(c_ptr), intent(in), value :: handle
    integer(c_int), intent(in), value :: idx
    character(kind=c_char), intent(out) :: type_buf(*), name_buf(*)
    integer(c_size_t), intent(in), value :: type_len, name_len
    integer(c_int), intent(out) :: n_in, n_out
    type(handle_box_t), pointer :: box
    stat = COLNN_ERR_ARGUMENT
    n_in = -1
    n_out = -1
    if (.not. get_net(handle, box)) return
    if (idx < 1 .or. idx > box%net%n_layers) return
    associate (l => box%net%layers(idx)%layer)
      call f_to_c_buffer(l%type_name(), type_buf, type_len)
      call f_to_c_buffer(l%name, name_buf, name_len)
      n_in = int(l%n_in, c_int)
      n_out = int(l%n_out, c_int)
    end associate
    stat = COLNN_OK
  end function c_colnn_layer_info

  subroutine c_colnn_version(buf, buflen) bind(C, name='colnn_version')
    character(kind=c_char), intent(out) :: buf(*)
    integer(c_size_t), intent(in), value :: buflen
    call f_to_c_buffer(colnn_version, buf, buflen)
  end subroutine c_colnn_version

  !> int colnn_ensemble_load(const char *path, colnn_ensemble **ens, char *errmsg, size_t len)
  !> path: a directory (members: its *.colnn files in name order) or a list file (a path a line).
  integer(c_int) function c_colnn_ensemble_load(path, handle, errmsg, errmsg_len) &
      bind(C, name='colnn_ensemble_load') result(stat)
    character(kind=c_char), intent(in) :: path(*)
    type(c_ptr), intent(out) :: handle
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(ensemble_box_t), pointer :: box
    character(len=1024) :: msg
    character(len=:), allocatable :: p
    logical :: is_dir
    integer :: s
    handle = c_null_ptr
    p = c_to_f_string(path)
    allocate (box)
    inquire (file=p//'/.', exist=is_dir)
    if (is_dir) then
      call box%ens%load_dir(p, s, msg)
    else
      call box%ens%load_list(p, s, msg)
    end if
    stat = int(s, c_int)
    if (s /= 0) then
      call f_to_c_buffer(msg, errmsg, errmsg_len)
      deallocate (box)
      return
    end if
    call f_to_c_buffer('', errmsg, errmsg_len)
    handle = c_loc(box)
  end function c_colnn_ensemble_load

  subroutine c_colnn_ensemble_free(handle) bind(C, name='colnn_ensemble_free')
    type(c_ptr), intent(in), value :: handle
    type(ensemble_box_t), pointer :: box
    if (.not. c_associated(handle)) return
    call c_f_pointer(handle, box)
    call box%ens%destroy()
    deallocate (box)
  end subroutine c_colnn_ensemble_free

  !> int colnn_ensemble_info(colnn_ensemble *e, int *n_members, int *n_inputs, int *n_outputs)
  integer(c_int) function c_colnn_ensemble_info(handle, n_members, n_inputs, n_outputs) &
      bind(C, name='colnn_ensemble_info') result(stat)
    type(c_ptr), intent(in), value :: handle
    integer(c_int), intent(out) :: n_members, n_inputs, n_outputs
    type(ensemble_box_t), pointer :: box
    stat = COLNN_ERR_ARGUMENT
    n_members = -1; n_inputs = -1; n_outputs = -1
    if (.not. c_associated(handle)) return
    call c_f_pointer(handle, box)
    n_members = box%ens%n_members
    n_inputs = box%ens%n_inputs
    n_outputs = box%ens%n_outputs
    stat = COLNN_OK
  end function c_colnn_ensemble_info

  !> int colnn_ensemble_set_noise(colnn_ensemble *e, const colnn_real *sd, int n_sd,
  !>                              int64_t seed, char *errmsg, size_t len); n_sd = 1 or n_inputs
  integer(c_int) function c_colnn_ensemble_set_noise(handle, sd, n_sd, seed, errmsg, errmsg_len) &
      bind(C, name='colnn_ensemble_set_noise') result(stat)
    type(c_ptr), intent(in), value :: handle, sd
    integer(c_int), intent(in), value :: n_sd
    integer(c_int64_t), intent(in), value :: seed
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(ensemble_box_t), pointer :: box
    real(wp), pointer :: sdf(:)
    character(len=1024) :: msg
    integer :: s
    if (.not. c_associated(handle) .or. .not. c_associated(sd) .or. n_sd < 1) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_ensemble_set_noise: null handle or no standard deviations', &
                         errmsg, errmsg_len)
      return
    end if
    call c_f_pointer(handle, box)
    call c_f_pointer(sd, sdf, [int(n_sd)])
    call box%ens%set_noise(sdf, int(seed, i8), s, msg)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_ensemble_set_noise

  !> int colnn_ensemble_forward(colnn_ensemble *e, const colnn_real *x, int n_columns,
  !>     colnn_real *mean, colnn_real *spread /* or NULL */, colnn_real *members /* or NULL:
  !>     (n_outputs, n_columns, n_members) */, int64_t column_offset, char *errmsg, size_t len)
  integer(c_int) function c_colnn_ensemble_forward(handle, x, n_columns, mean, spread, members, &
                                                   column_offset, errmsg, errmsg_len) &
      bind(C, name='colnn_ensemble_forward') result(stat)
    type(c_ptr), intent(in), value :: handle, x, mean, spread, members
    integer(c_int), intent(in), value :: n_columns
    integer(c_int64_t), intent(in), value :: column_offset
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(ensemble_box_t), pointer :: box
    real(wp), pointer :: xf(:, :), mf(:, :), sf(:, :), yf(:, :, :)
    character(len=1024) :: msg
    integer :: s, nin, nout
    if (.not. c_associated(handle) .or. .not. c_associated(x) .or. .not. c_associated(mean)) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_ensemble_forward: null handle, input or mean', errmsg, errmsg_len)
      return
    end if
    if (n_columns < 1) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_ensemble_forward: n_columns must be >= 1, got '// &
                         str(int(n_columns)), errmsg, errmsg_len)
      return
    end if
    call c_f_pointer(handle, box)
    nin = box%ens%n_inputs
    nout = box%ens%n_outputs
    call c_f_pointer(x, xf, [nin, int(n_columns)])
    call c_f_pointer(mean, mf, [nout, int(n_columns)])
    if (c_associated(spread) .and. c_associated(members)) then
      call c_f_pointer(spread, sf, [nout, int(n_columns)])
      call c_f_pointer(members, yf, [nout, int(n_columns), box%ens%n_members])
      call box%ens%forward(xf, mf, s, msg, spread=sf, members_out=yf, column_offset=int(column_offset, i8))
    else if (c_associated(spread)) then
      call c_f_pointer(spread, sf, [nout, int(n_columns)])
      call box%ens%forward(xf, mf, s, msg, spread=sf, column_offset=int(column_offset, i8))
    else if (c_associated(members)) then
      call c_f_pointer(members, yf, [nout, int(n_columns), box%ens%n_members])
      call box%ens%forward(xf, mf, s, msg, members_out=yf, column_offset=int(column_offset, i8))
    else
      call box%ens%forward(xf, mf, s, msg, column_offset=int(column_offset, i8))
    end if
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_ensemble_forward

  !> int colnn_forward_train(colnn_model *m, const colnn_real *x, int n_columns, colnn_real *y,
  !>                         char *errmsg, size_t len): training mode (batch statistics, dropout)
  integer(c_int) function c_colnn_forward_train(handle, x, n_columns, y, errmsg, errmsg_len) &
      bind(C, name='colnn_forward_train') result(stat)
    type(c_ptr), intent(in), value :: handle, x, y
    integer(c_int), intent(in), value :: n_columns
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    real(wp), pointer :: xf(:, :), yf(:, :)
    character(len=1024) :: msg
    integer :: s
    if (.not. get_net(handle, box) .or. .not. c_associated(x) .or. .not. c_associated(y) &
        .or. n_columns < 1) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_forward_train: null pointer or n_columns < 1', errmsg, errmsg_len)
      return
    end if
    call c_f_pointer(x, xf, [box%net%n_inputs, int(n_columns)])
    call c_f_pointer(y, yf, [box%net%n_outputs, int(n_columns)])
    call box%trainer%state%forward_train(box%net, xf, yf, s, msg)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_forward_train

  !> int colnn_backward(colnn_model *m, const colnn_real *dy, int n_columns, colnn_real *dx
  !>                    /* or NULL */, char *errmsg, size_t len)
  integer(c_int) function c_colnn_backward(handle, dy, n_columns, dx, errmsg, errmsg_len) &
      bind(C, name='colnn_backward') result(stat)
    type(c_ptr), intent(in), value :: handle, dy, dx
    integer(c_int), intent(in), value :: n_columns
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    real(wp), pointer :: dyf(:, :), dxf(:, :)
    character(len=1024) :: msg
    integer :: s
    if (.not. get_net(handle, box) .or. .not. c_associated(dy) .or. n_columns < 1) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_backward: null pointer or n_columns < 1', errmsg, errmsg_len)
      return
    end if
    call c_f_pointer(dy, dyf, [box%net%n_outputs, int(n_columns)])
    if (c_associated(dx)) then
      call c_f_pointer(dx, dxf, [box%net%n_inputs, int(n_columns)])
      call box%trainer%state%backward(box%net, dyf, s, msg, dx=dxf)
    else
      call box%trainer%state%backward(box%net, dyf, s, msg)
    end if
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_backward

  integer(c_int64_t) function c_colnn_num_trainable(handle) bind(C, name='colnn_num_trainable') &
      result(n)
    type(c_ptr), intent(in), value :: handle
    type(handle_box_t), pointer :: box
    n = -1
    if (get_net(handle, box)) n = int(box%net%num_trainable(), c_int64_t)
  end function c_colnn_num_trainable

  !> int colnn_get_params(colnn_model *m, colnn_real *p, int64_t n): n = colnn_num_trainable
  integer(c_int) function c_colnn_get_params(handle, p, n) bind(C, name='colnn_get_params') &
      result(stat)
    type(c_ptr), intent(in), value :: handle, p
    integer(c_int64_t), intent(in), value :: n
    type(handle_box_t), pointer :: box
    real(wp), pointer :: pf(:)
    stat = COLNN_ERR_ARGUMENT
    if (.not. get_net(handle, box) .or. .not. c_associated(p)) return
    if (n /= box%net%num_trainable()) return
    call c_f_pointer(p, pf, [n])
    call box%net%get_params(pf)
    stat = COLNN_OK
  end function c_colnn_get_params

  integer(c_int) function c_colnn_set_params(handle, p, n) bind(C, name='colnn_set_params') &
      result(stat)
    type(c_ptr), intent(in), value :: handle, p
    integer(c_int64_t), intent(in), value :: n
    type(handle_box_t), pointer :: box
    real(wp), pointer :: pf(:)
    stat = COLNN_ERR_ARGUMENT
    if (.not. get_net(handle, box) .or. .not. c_associated(p)) return
    if (n /= box%net%num_trainable()) return
    call c_f_pointer(p, pf, [n])
    if (.not. all(ieee_is_finite(pf))) then
      stat = COLNN_ERR_NONFINITE
      return
    end if
    call box%net%set_params(pf)
    stat = COLNN_OK
  end function c_colnn_set_params

  integer(c_int) function c_colnn_get_grads(handle, g, n) bind(C, name='colnn_get_grads') &
      result(stat)
    type(c_ptr), intent(in), value :: handle, g
    integer(c_int64_t), intent(in), value :: n
    type(handle_box_t), pointer :: box
    real(wp), pointer :: gf(:)
    stat = COLNN_ERR_ARGUMENT
    if (.not. get_net(handle, box) .or. .not. c_associated(g)) return
    if (n /= box%net%num_trainable()) return
    call c_f_pointer(g, gf, [n])
    call box%net%get_grads(gf)
    stat = COLNN_OK
  end function c_colnn_get_grads

  !> int colnn_train_configure(colnn_model *m, const char *optimizer, const char *loss,
  !>                           char *errmsg, size_t len)
  !> optimizer: 'adam learning_rate=1e-3 ...', 'rmsprop ...', 'sgd momentum=0.9 nesterov=true';
  !> loss: 'mse', 'mae', 'huber delta=1', 'categorical_crossentropy', 'gaussian_nll'
  integer(c_int) function c_colnn_train_configure(handle, optimizer, loss, errmsg, errmsg_len) &
      bind(C, name='colnn_train_configure') result(stat)
    type(c_ptr), intent(in), value :: handle
    character(kind=c_char), intent(in) :: optimizer(*), loss(*)
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    character(len=1024) :: msg
    integer :: s
    if (.not. get_net(handle, box)) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_train_configure: null model handle', errmsg, errmsg_len)
      return
    end if
    call box%trainer%configure(c_to_f_string(optimizer), c_to_f_string(loss), s, msg)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_train_configure

  !> The checks and array views shared by the training calls: false (with stat and errmsg set)
  !> when the handle, the arrays or the training configuration are missing.
  logical function training_views(handle, x, t, n_columns, who, box, xf, tf, stat, errmsg, &
                                  errmsg_len) result(ok)
    type(c_ptr), intent(in) :: handle, x, t
    integer(c_int), intent(in) :: n_columns
    character(len=*), intent(in) :: who
    type(handle_box_t), pointer, intent(out) :: box
    real(wp), pointer, intent(out) :: xf(:, :), tf(:, :)
    integer(c_int), intent(out) :: stat
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in) :: errmsg_len
    integer :: nt
    ok = .false.
    stat = COLNN_ERR_ARGUMENT
    if (.not. get_net(handle, box) .or. .not. c_associated(x) .or. .not. c_associated(t) &
        .or. n_columns < 1) then
      call f_to_c_buffer(who//': null pointer or n_columns < 1', errmsg, errmsg_len)
      return
    end if
    if (.not. allocated(box%trainer%loss)) then
      call f_to_c_buffer(who//': call colnn_train_configure first', errmsg, errmsg_len)
      return
    end if
    nt = max(1, box%trainer%loss%n_targets(box%net%n_outputs))
    call c_f_pointer(x, xf, [box%net%n_inputs, int(n_columns)])
    call c_f_pointer(t, tf, [nt, int(n_columns)])
    stat = COLNN_OK
    ok = .true.
  end function training_views

  !> int colnn_train_step(colnn_model *m, const colnn_real *x, const colnn_real *targets,
  !>                      int n_columns, colnn_real *loss, char *errmsg, size_t len)
  integer(c_int) function c_colnn_train_step(handle, x, t, n_columns, loss, errmsg, errmsg_len) &
      bind(C, name='colnn_train_step') result(stat)
    type(c_ptr), intent(in), value :: handle, x, t
    integer(c_int), intent(in), value :: n_columns
    real(wp), intent(out) :: loss
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    real(wp), pointer :: xf(:, :), tf(:, :)
    character(len=1024) :: msg
    integer :: s
    loss = 0
    if (.not. training_views(handle, x, t, n_columns, 'colnn_train_step', box, xf, tf, stat, &
                             errmsg, errmsg_len)) return
    call box%trainer%train_step(box%net, xf, tf, loss, s, msg)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_train_step

  !> int colnn_train_epoch(colnn_model *m, const colnn_real *x, const colnn_real *targets,
  !>     int n_columns, int batch_size, int64_t seed /* 0: in order */, int epoch,
  !>     colnn_real *mean_loss, char *errmsg, size_t len)
  integer(c_int) function c_colnn_train_epoch(handle, x, t, n_columns, batch_size, seed, epoch, &
                                              mean_loss, errmsg, errmsg_len) &
      bind(C, name='colnn_train_epoch') result(stat)
    type(c_ptr), intent(in), value :: handle, x, t
    integer(c_int), intent(in), value :: n_columns, batch_size, epoch
    integer(c_int64_t), intent(in), value :: seed
    real(wp), intent(out) :: mean_loss
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    real(wp), pointer :: xf(:, :), tf(:, :)
    character(len=1024) :: msg
    integer :: s
    mean_loss = 0
    if (.not. training_views(handle, x, t, n_columns, 'colnn_train_epoch', box, xf, tf, stat, &
                             errmsg, errmsg_len)) return
    call box%trainer%train_epoch(box%net, xf, tf, int(batch_size), int(seed, i8), int(epoch), &
                                 mean_loss, s, msg)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_train_epoch

  !> int colnn_evaluate(colnn_model *m, const colnn_real *x, const colnn_real *targets,
  !>                    int n_columns, colnn_real *loss, char *errmsg, size_t len)
  integer(c_int) function c_colnn_evaluate(handle, x, t, n_columns, loss, errmsg, errmsg_len) &
      bind(C, name='colnn_evaluate') result(stat)
    type(c_ptr), intent(in), value :: handle, x, t
    integer(c_int), intent(in), value :: n_columns
    real(wp), intent(out) :: loss
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    real(wp), pointer :: xf(:, :), tf(:, :)
    character(len=1024) :: msg
    integer :: s
    loss = 0
    if (.not. training_views(handle, x, t, n_columns, 'colnn_evaluate', box, xf, tf, stat, &
                             errmsg, errmsg_len)) return
    call box%trainer%evaluate(box%net, xf, tf, loss, s, msg)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_evaluate

  !> int colnn_save_checkpoint(colnn_model *m, const char *path, char *errmsg, size_t len):
  !> the model file plus a training block (optimizer, loss, step count, optimizer state);
  !> colnn_load of that file restores the training configuration, so training resumes exactly.
  integer(c_int) function c_colnn_save_checkpoint(handle, path, errmsg, errmsg_len) &
      bind(C, name='colnn_save_checkpoint') result(stat)
    type(c_ptr), intent(in), value :: handle
    character(kind=c_char), intent(in) :: path(*)
    character(kind=c_char), intent(out) :: errmsg(*)
    integer(c_size_t), intent(in), value :: errmsg_len
    type(handle_box_t), pointer :: box
    type(layer_spec_t) :: spec
    character(len=1024) :: msg
    integer :: s
    if (.not. get_net(handle, box)) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_save_checkpoint: null model handle', errmsg, errmsg_len)
      return
    end if
    if (.not. allocated(box%trainer%loss)) then
      stat = COLNN_ERR_ARGUMENT
      call f_to_c_buffer('colnn_save_checkpoint: no training configured (use colnn_save)', &
                         errmsg, errmsg_len)
      return
    end if
    call box%trainer%describe(spec)
    call box%net%save(c_to_f_string(path), s, msg, training=spec)
    stat = int(s, c_int)
    call f_to_c_buffer(msg, errmsg, errmsg_len)
  end function c_colnn_save_checkpoint

  !> Targets per column the configured loss expects (-1: no training configured).
  integer(c_int) function c_colnn_train_targets(handle) bind(C, name='colnn_train_targets') &
      result(n)
    type(c_ptr), intent(in), value :: handle
    type(handle_box_t), pointer :: box
    n = -1
    if (.not. get_net(handle, box)) return
    if (.not. allocated(box%trainer%loss)) return
    n = int(box%trainer%loss%n_targets(box%net%n_outputs), c_int)
  end function c_colnn_train_targets
end module colnn_c_api
